-- Setting values, kept outside the event log: events carry fingerprints.
CREATE TABLE setting_values (
    fingerprint TEXT PRIMARY KEY,
    value       TEXT NOT NULL
);
CREATE TABLE installation (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    fingerprint_key TEXT NOT NULL
);
