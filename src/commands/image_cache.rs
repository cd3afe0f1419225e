//! `kvmprov image-cache [--all]`: the catalog images instances use (or all of them) downloaded,
//! verified and cached, and uploaded to remote hypervisors. The image-cache stage alone.

use crate::exit::ExitStatus;
use crate::settings::{Session, Stage, StageSettings};
use crate::stages;

/// The command's name in its `--output json` envelope.
pub const NAME: &str = "image-cache";

/// `all`: every catalog image, not only those instances use.
pub fn run(s: &Session, all: bool) -> ExitStatus {
    let settings = StageSettings {
        all_images: all,
        ..StageSettings::only(Stage::ImageCache)
    };
    let run = stages::run(s, &settings);
    s.printer
        .stages(NAME, s.check, &run.reports, run.error.as_ref());
    ExitStatus::failed_if(run.failed())
}
