//! How a command ends, as the shell sees it (the exit codes the README documents).

use std::process::ExitCode;

/// A command's result for the shell; `main` turns it into the process's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Everything asked for was done (or, with `--check`, planned): 0.
    Success,
    /// A stage, an instance or a hypervisor failed: 1.
    Failure,
    /// The command line or the variables file is wrong: 2.
    Usage,
}

impl ExitStatus {
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Failure => 1,
            ExitStatus::Usage => 2,
        }
    }

    /// `Failure` when `failed`, else `Success`.
    pub fn failed_if(failed: bool) -> Self {
        if failed {
            ExitStatus::Failure
        } else {
            ExitStatus::Success
        }
    }
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> Self {
        ExitCode::from(status.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes the README documents; scripts depend on them.
    #[test]
    fn exit_codes_are_the_documented_ones() {
        assert_eq!(ExitStatus::Success.code(), 0);
        assert_eq!(ExitStatus::Failure.code(), 1);
        assert_eq!(ExitStatus::Usage.code(), 2);
        assert_eq!(ExitStatus::failed_if(true), ExitStatus::Failure);
        assert_eq!(ExitStatus::failed_if(false), ExitStatus::Success);
    }
}
