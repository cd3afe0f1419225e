//! `--output json`: one document per command, the same envelope around every payload:
//!
//! ```json
//! {"command": "provision", "ok": true, "error": null, "check": false, "stages": [...]}
//! ```
//!
//! `ok` is the exit status's verdict (false exactly when kvmprov exits non-zero), `error` the
//! sentence that stopped the command (also on stderr). The payload's fields follow, by command:
//! `stages` (+ `check`) for the stage commands, `config` for `check`, `hypervisors` for `ping`,
//! `instances` for `status`. `inventory` and `schema` print the formats Ansible and JSON Schema
//! define, not this envelope.

use kvmprov_hypervisor::{HostInfo, NetworkInfo};
use serde::Serialize;

use crate::config::Config;
use crate::report::StageReport;

#[derive(Serialize)]
struct Envelope<'a> {
    command: &'a str,
    ok: bool,
    error: Option<String>,
    #[serde(flatten)]
    payload: Payload<'a>,
}

/// What a command reports, beside the envelope's fields.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Payload<'a> {
    /// The command stopped before it had anything to report.
    None,
    Stages {
        /// `--check`: every outcome is a plan.
        check: bool,
        stages: &'a [StageReport],
    },
    Config {
        config: &'a Config,
    },
    Hypervisors {
        hypervisors: &'a [Probe],
    },
    Instances {
        instances: &'a [InstanceStatus],
    },
}

/// The document, pretty-printed.
pub fn render(
    command: &str,
    ok: bool,
    error: Option<String>,
    payload: Payload,
) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(&Envelope {
        command,
        ok,
        error,
        payload,
    })
}

/// `ping`: what one hypervisor answered, or why it did not.
#[derive(Debug, Serialize)]
pub struct Probe {
    pub uri: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<HostInfo>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What to try when the error is a remote hypervisor's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// `status`: one declared instance as its hypervisor sees it.
#[derive(Debug, Serialize)]
pub struct InstanceStatus {
    pub name: String,
    /// The hypervisor's libvirt URI.
    pub host: String,
    pub state: String,
    pub domain_type: String,
    pub image: String,
    pub ip: Option<String>,
    pub ssh_ready: bool,
    pub snapshots: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Action, Op};

    #[test]
    fn stage_reports_in_the_envelope() {
        let r = StageReport::planned("cleanup", vec![Action::new("a", Op::Undefine, "declared")]);
        let stages = [r];
        let text = render(
            "cleanup",
            true,
            None,
            Payload::Stages {
                check: true,
                stages: &stages,
            },
        )
        .unwrap();
        let j: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(j["command"], "cleanup");
        assert_eq!(j["ok"], true);
        assert_eq!(j["error"], serde_json::Value::Null);
        assert_eq!(j["check"], true);
        assert_eq!(j["stages"][0]["outcomes"][0]["op"], "undefine");
        assert_eq!(j["stages"][0]["outcomes"][0]["status"], "planned");
        assert_eq!(j["stages"][0]["outcomes"][0]["target"], "a");
    }

    #[test]
    fn an_envelope_without_payload_has_only_its_three_fields() {
        let text = render("check", false, Some("bad".into()), Payload::None).unwrap();
        let j: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"command": "check", "ok": false, "error": "bad"})
        );
    }
}
