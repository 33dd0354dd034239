//! Builds the picker every data plane routes with, from a policy name or an
//! EndpointPickerConfig.

use std::path::Path;
use std::sync::Arc;

use anyhow::bail;
use igw_core::Datastore;
use igw_request::RandomPicker;

/// The picker for `datastore`: from `--config-file` / `--config-text` when given.
pub fn build(
    datastore: &Arc<Datastore>,
    config_file: Option<&Path>,
    config_text: Option<&str>,
) -> anyhow::Result<Arc<RandomPicker>> {
    if config_file.is_some() || config_text.is_some() {
        bail!("EndpointPickerConfig files are not supported by this build yet");
    }
    Ok(Arc::new(RandomPicker::new(datastore.clone(), super::seed())))
}
