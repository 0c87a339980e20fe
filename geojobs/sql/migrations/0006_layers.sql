-- 0006: result layers. The API role reads every result table and view, including those the
-- worker role creates after this migration (downloads and layers are served from them).
GRANT USAGE ON SCHEMA results TO geojobs_api;
GRANT SELECT ON ALL TABLES IN SCHEMA results TO geojobs_api;
ALTER DEFAULT PRIVILEGES FOR ROLE geojobs_worker IN SCHEMA results GRANT SELECT ON TABLES TO geojobs_api;
