//! What a run carries from stage to stage ([`Handoff`]) and what it ends with when it cannot
//! go on ([`StageError`]).

use std::collections::BTreeMap;

use kvmprov_image::CachedImage;

use crate::plan::{error_chain, StageReport};

/// What a stage hands on to the next within one run.
#[derive(Default)]
pub struct Handoff {
    /// image_name → the cached version this run resolved (image-cache stage).
    pub images: BTreeMap<String, CachedImage>,
    /// image names a `--check` run would download (so provision can plan around them).
    pub pending: Vec<String>,
}

/// A run that could not go on: the reports so far and why it stopped.
#[derive(Debug)]
pub struct StageError {
    pub reports: Vec<StageReport>,
    pub error: String,
}

impl StageError {
    pub fn new(reports: Vec<StageReport>, e: &dyn std::error::Error) -> Self {
        StageError {
            reports,
            error: error_chain(e),
        }
    }

    /// The reports of a run over several hosts, failed if any host stopped with an error.
    pub fn collect(
        reports: Vec<StageReport>,
        errors: Vec<String>,
    ) -> Result<Vec<StageReport>, Self> {
        if errors.is_empty() {
            Ok(reports)
        } else {
            Err(StageError {
                reports,
                error: errors.join("; "),
            })
        }
    }
}

/// A host's error, named by its URI when a run spans several.
pub fn host_error(multi: bool, uri: &str, error: String) -> String {
    if multi {
        format!("{uri}: {error}")
    } else {
        error
    }
}
