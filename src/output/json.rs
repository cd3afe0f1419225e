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
//!
//! Every string of the document passes through [`super::sanitize`] as it is written ([`render`]):
//! reasons, targets, failure details and errors quote guests, image hosts and other processes, and
//! JSON's escaping keeps their control and bidirectional characters intact for whoever reads
//! the values.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};

use kvmprov_hypervisor::{HostInfo, NetworkInfo};
use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter, PrettyFormatter};

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
    /// `snapshot list`.
    Snapshots {
        instances: &'a [InstanceSnapshots],
    },
}

/// The document, pretty-printed, every string in it sanitized.
pub fn render(
    command: &str,
    ok: bool,
    error: Option<String>,
    payload: Payload,
) -> Result<String, serde_json::Error> {
    let mut doc = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut doc, Sanitizing::default());
    Envelope {
        command,
        ok,
        error,
        payload,
    }
    .serialize(&mut ser)?;
    // serde_json writes only UTF-8 (its strings are `str`, the rest ASCII).
    String::from_utf8(doc).map_err(|e| serde::ser::Error::custom(e.utf8_error()))
}

/// serde_json's pretty printer, except that each string is collected whole and written
/// sanitized (whole, because the sanitizer removes escape sequences, not single characters).
#[derive(Default)]
struct Sanitizing {
    pretty: PrettyFormatter<'static>,
    /// The string being written, unescaped.
    text: String,
}

impl Formatter for Sanitizing {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        _: &mut W,
        s: &str,
    ) -> io::Result<()> {
        self.text.push_str(s);
        Ok(())
    }

    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        _: &mut W,
        c: CharEscape,
    ) -> io::Result<()> {
        self.text.push(match c {
            CharEscape::Quote => '"',
            CharEscape::ReverseSolidus => '\\',
            CharEscape::Solidus => '/',
            CharEscape::Backspace => '\x08',
            CharEscape::FormFeed => '\x0c',
            CharEscape::LineFeed => '\n',
            CharEscape::CarriageReturn => '\r',
            CharEscape::Tab => '\t',
            CharEscape::AsciiControl(b) => char::from(b),
        });
        Ok(())
    }

    fn begin_string<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b"\"")
    }

    fn end_string<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        let text = super::sanitize(&std::mem::take(&mut self.text), true);
        // serde_json's own escaping of the clean text, without the quotes it adds: the opening
        // one is written (a map's integer key is written between the two quotes, not as text).
        let quoted = serde_json::to_string(&text).map_err(io::Error::other)?;
        let inner = &quoted[1..quoted.len() - 1];
        w.write_all(inner.as_bytes())?;
        w.write_all(b"\"")
    }

    // The layout is the pretty printer's.

    fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.pretty.begin_array(w)
    }

    fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.pretty.end_array(w)
    }

    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.pretty.begin_array_value(w, first)
    }

    fn end_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.pretty.end_array_value(w)
    }

    fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.pretty.begin_object(w)
    }

    fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.pretty.end_object(w)
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.pretty.begin_object_key(w, first)
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.pretty.begin_object_value(w)
    }

    fn end_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.pretty.end_object_value(w)
    }
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

/// `snapshot list`: one declared instance's snapshots, oldest first.
#[derive(Debug, Serialize)]
pub struct InstanceSnapshots {
    pub name: String,
    /// The hypervisor's libvirt URI.
    pub host: String,
    /// Whether the domain exists (an instance not defined has no snapshots).
    pub defined: bool,
    pub snapshots: Vec<kvmprov_hypervisor::SnapshotInfo>,
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
    /// The instance's data disks (left out when it has none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskStatus>,
    /// Every NIC's addresses (`ip` is the primary NIC's IPv4); only for an instance with
    /// several NICs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<NicAddresses>,
}

/// `status`: one data disk of an instance.
#[derive(Debug, Serialize)]
pub struct DiskStatus {
    pub name: String,
    /// The volume's file in the instance pool.
    pub volume: String,
    /// What the guest calls it.
    pub by_id: String,
    /// The configured size.
    pub size_gib: u64,
    /// The volume's virtual size in bytes; `None`: there is no such volume.
    pub capacity_bytes: Option<u64>,
    pub filesystem: Option<String>,
    pub mount: Option<String>,
}

/// One NIC's addresses as found now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NicAddresses {
    /// The libvirt network the NIC is on (absent for a NIC on a host bridge).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The host bridge the NIC is plugged into directly (absent for a NIC on a network).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    pub mac: String,
    pub primary: bool,
    pub ipv4: Option<Ipv4Addr>,
    /// The static IPv6 address the config gives; addresses the guest takes by SLAAC are not
    /// looked up (no address source reports IPv6).
    pub ipv6: Option<Ipv6Addr>,
}

impl NicAddresses {
    /// Where the NIC sits, for a listing: the network's name, or `bridge br0`.
    pub fn on(&self) -> String {
        match (&self.network, &self.bridge) {
            (_, Some(b)) => format!("bridge {b}"),
            (Some(n), None) => n.clone(),
            (None, None) => "-".to_string(),
        }
    }
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

    /// Integer map keys are written between the string's quotes; they stay keys.
    #[test]
    fn sanitized_documents_keep_integer_keys_and_the_pretty_layout() {
        let value = std::collections::BTreeMap::from([(7u32, vec!["a\u{202e}b"])]);
        let mut doc = Vec::new();
        let mut ser = serde_json::Serializer::with_formatter(&mut doc, Sanitizing::default());
        value.serialize(&mut ser).unwrap();
        assert_eq!(
            String::from_utf8(doc).unwrap(),
            "{\n  \"7\": [\n    \"a\\\\u{202e}b\"\n  ]\n}"
        );
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
