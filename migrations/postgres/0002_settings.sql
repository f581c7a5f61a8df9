-- Setting values, kept outside the event log: events carry fingerprints.
CREATE TABLE setting_values (
    fingerprint text PRIMARY KEY,
    value       text NOT NULL
);
CREATE TABLE installation (
    id              integer PRIMARY KEY CHECK (id = 1),
    fingerprint_key text NOT NULL
);
GRANT SELECT, INSERT ON setting_values TO slipway_writer;
GRANT SELECT, INSERT ON installation TO slipway_writer;
