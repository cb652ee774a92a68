//! Custom resources: the types CRDs define. Their names are DNS subdomains and nothing else
//! is known of them beyond their schema.

use crate::resources::ResourceType;
use crate::strategy::Strategy;

/// The strategy of every custom resource.
#[derive(Debug)]
pub struct CustomResources;

impl Strategy for CustomResources {}

// The constructor lives with the custom resources' strategy, so the type table
// (`resources.rs`) needs to know no registry entry.
impl ResourceType {
    /// A custom resource type defined by a CustomResourceDefinition.
    #[expect(clippy::too_many_arguments, reason = "the names a CRD declares")]
    pub(crate) fn custom(
        group: &str,
        version: &str,
        kind: &str,
        list_kind: &str,
        plural: &str,
        singular: &str,
        namespaced: bool,
        short_names: Vec<String>,
        categories: Vec<String>,
        has_status: bool,
        scale_paths: Option<crate::resources::ScalePaths>,
    ) -> ResourceType {
        ResourceType {
            group: group.to_owned(),
            version: version.to_owned(),
            kind: kind.to_owned(),
            list_kind: list_kind.to_owned(),
            plural: plural.to_owned(),
            singular: singular.to_owned(),
            namespaced,
            short_names,
            categories,
            has_status,
            has_scale: scale_paths.is_some(),
            scale_paths,
            tracks_generation: true,
            create_only: false,
            codec: None,
            schema: None,
            strategy: &CustomResources,
            conversion: None,
            quantities: std::sync::OnceLock::new(),
        }
    }
}
