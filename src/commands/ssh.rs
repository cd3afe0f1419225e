//! `kvmprov ssh NAME [COMMAND…]`: this process replaced by `ssh` to the instance, with kvmprov's
//! operator key and the instance's pinned host key (through the hypervisor when it is remote).

use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::address;
use crate::exit::ExitStatus;
use crate::login::Login;
use crate::report::error_chain;
use crate::settings::Session;

/// Replace this process with `ssh` to the instance (interactive unless a command is given).
pub fn run(s: &Session, name: &str, command: &[String]) -> ExitStatus {
    let Some(inst) = s.cfg.instance(name) else {
        let names: Vec<&str> = s.cfg.instances.iter().map(|i| i.name.as_str()).collect();
        s.printer.error(&format!(
            "`{name}` is not a declared instance (declared: {}){}",
            names.join(", "),
            crate::config::did_you_mean(name, &names)
        ));
        return ExitStatus::Usage;
    };
    let s = &s.for_host(&inst.libvirt_uri);
    let found = s.connect().and_then(|hv| {
        let networks = hv.networks()?;
        address::current(&hv, &networks, inst, &s.cfg.instance_pool_path)
    });
    let addr = match found {
        Ok(Some(a)) => a,
        Ok(None) => {
            s.printer.error(&format!(
                "`{name}` has no IPv4 address yet (is it running? try `kvmprov status`)"
            ));
            return ExitStatus::Failure;
        }
        Err(e) => {
            s.printer.error(&error_chain(&e));
            return ExitStatus::Failure;
        }
    };
    let login = Login::new(s, inst).map_err(|e| error_chain(&e));
    let target = match login.and_then(|l| l.target(addr).map_err(|e| error_chain(&e))) {
        Ok(t) => t,
        Err(e) => {
            s.printer.error(&e);
            return ExitStatus::Failure;
        }
    };
    let args = match target.args(10) {
        Ok(a) => a,
        Err(e) => {
            s.printer.error(&error_chain(&e));
            return ExitStatus::Failure;
        }
    };
    let mut cmd = Command::new("ssh");
    if command.is_empty() {
        // Interactive: allocate a terminal; BatchMode stays on (keys only, no prompts).
        cmd.arg("-t");
    }
    cmd.args(args);
    if !command.is_empty() {
        cmd.arg("--").args(command);
    }
    let err = cmd.exec();
    s.printer.error(&format!("cannot run ssh: {err}"));
    ExitStatus::Failure
}
