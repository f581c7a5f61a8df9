//! The one place where old payload versions are upgraded on read. Stored
//! events are never rewritten (the log is append-only and hash-chained), so a
//! change of meaning gets a new schema version and a step here that turns the
//! old payload into the new one, one version at a time.

use serde_json::Value;

/// Upgrades `payload` of `message_type` from `from` to `to`, step by step.
pub(crate) fn to_current(message_type: &str, from: u32, to: u32, mut payload: Value) -> Result<Value, String> {
    if from == 0 {
        return Err("schema version 0 does not exist (versions start at 1)".into());
    }
    for version in from..to {
        payload = step(message_type, version, payload)?;
    }
    Ok(payload)
}

/// One upgrade, from `version` to `version + 1`.
fn step(message_type: &str, version: u32, payload: Value) -> Result<Value, String> {
    match (message_type, version) {
        // v1 named the requested ref `branch` and had no build mode: every
        // deployment was a cloud build.
        ("DeploymentRequested", 1) => {
            let Value::Object(mut map) = payload else {
                return Err("expected a JSON object".into());
            };
            if let Some(branch) = map.remove("branch") {
                map.entry("git_ref").or_insert(branch);
            }
            map.entry("mode").or_insert_with(|| Value::String("cloud".into()));
            Ok(Value::Object(map))
        }
        // Types whose shape did not change between these versions.
        _ => Ok(payload),
    }
}
