"""Pure geospatial analyses: GeoDataFrame (or raster) in, result out.

Nothing in this package touches the database or the job queue, so every
function can be called from a notebook or a script as it is.
"""
