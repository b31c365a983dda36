-- Every record of the proxy: the Store contract's tables are the values of `tbl`
-- (src/store/mod.rs, Table::name), keys and values are the bytes the Repo writes.
CREATE TABLE IF NOT EXISTS mcp_auth_proxy_entries (
    tbl        TEXT   NOT NULL,
    key        BYTEA  NOT NULL,
    value      BYTEA  NOT NULL,
    -- Unix seconds after which the record reads as absent; NULL: never.
    expires_at BIGINT,
    PRIMARY KEY (tbl, key)
);

-- The expiry sweep deletes by time.
CREATE INDEX IF NOT EXISTS mcp_auth_proxy_entries_expiry
    ON mcp_auth_proxy_entries (expires_at)
    WHERE expires_at IS NOT NULL;
