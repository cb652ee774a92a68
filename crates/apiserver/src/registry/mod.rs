//! Every built-in resource, one strategy per file, grouped as the API groups them (upstream's
//! `pkg/registry/<group>/<resource>` is the model). A resource's file holds its rules (see
//! [`Strategy`](crate::strategy::Strategy)); [`builtin_types`] is the one list that serves
//! it. Adding a resource means adding its file and its line here.

pub mod admissionregistration;
pub mod apiextensions;
pub mod apiregistration;
pub mod apps;
pub mod authentication;
pub mod authorization;
pub mod autoscaling;
pub mod batch;
pub mod certificates;
pub mod coordination;
pub mod core;
pub mod custom;
pub mod discovery;
pub mod events;
pub mod flowcontrol;
pub mod metrics;
pub mod networking;
pub mod node;
pub mod policy;
pub mod rbac;
pub mod resource;
pub mod scheduling;
pub mod storage;
pub mod storagemigration;

use serde_json::{Map, Value};

use crate::resources::{Extra, ResourceType, builtin, review};
use crate::status::Cause;

/// Sets `key` when it is missing or null (upstream's defaulting never overrides a value).
pub(crate) fn set_default(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.to_owned(), value);
    }
}

/// `spec` of `object` as a map, when it is one.
pub(crate) fn spec_mut(object: &mut Value) -> Option<&mut Map<String, Value>> {
    object.get_mut("spec").and_then(Value::as_object_mut)
}

/// Upstream's "field is immutable" check of one field between the stored and the new object.
pub(crate) fn immutable(new: &Value, old: &Value, pointer: &str, causes: &mut Vec<Cause>) {
    let (a, b) = (new.pointer(pointer), old.pointer(pointer));
    if a != b {
        let path = pointer.trim_start_matches('/').replace('/', ".");
        let shown = a.map_or_else(|| "null".to_owned(), Value::to_string);
        causes.push(Cause::new(
            "FieldValueInvalid",
            &path,
            format!("Invalid value: {shown}: field is immutable"),
        ));
    }
}

macro_rules! builtins {
    ($($ty:ty => $singular:literal [$($short:literal),*] [$($cat:literal),*] $($flag:ident)* => $strategy:expr;)*) => {
        vec![$({
            #[allow(unused_mut)]
            let mut extra = Extra {
                singular: $singular,
                short_names: &[$($short),*],
                categories: &[$($cat),*],
                status: false,
                scale: false,
                generation: false,
            };
            $(builtins!(@flag extra $flag);)*
            builtin::<$ty>(extra, &$strategy)
        }),*]
    };
    (@flag $e:ident status) => { $e.status = true; };
    (@flag $e:ident scale) => { $e.scale = true; };
    (@flag $e:ident generation) => { $e.generation = true; };
}

/// Every built-in type krust serves, in discovery order (the order upstream lists them).
pub(crate) fn builtin_types() -> Vec<ResourceType> {
    use k8s_openapi::api::{
        admissionregistration::v1 as admissionregistration_v1, apps::v1 as apps_v1,
        authentication::v1 as authentication_v1, authorization::v1 as authorization_v1,
        autoscaling::v1 as autoscaling_v1, autoscaling::v2 as autoscaling_v2,
        batch::v1 as batch_v1, certificates::v1 as certificates_v1,
        coordination::v1 as coordination_v1, core::v1 as core_v1, discovery::v1 as discovery_v1,
        events::v1 as events_v1, flowcontrol::v1 as flowcontrol_v1,
        networking::v1 as networking_v1, node::v1 as node_v1, policy::v1 as policy_v1,
        rbac::v1 as rbac_v1, resource::v1 as resource_v1, scheduling::v1 as scheduling_v1,
        storage::v1 as storage_v1, storagemigration::v1 as storagemigration_v1,
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions_v1;
    use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1 as apiregistration_v1;
    // Upstream's group order: the core group, then apiregistration, apps, events,
    // authentication, authorization, autoscaling and on.
    let mut types = builtins! {
        core_v1::ComponentStatus => "componentstatus" ["cs"] [] => core::componentstatus::ComponentStatuses;
        core_v1::ConfigMap => "configmap" ["cm"] [] => core::configmap::ConfigMaps;
        core_v1::Endpoints => "endpoints" ["ep"] [] => core::endpoints::EndpointsStrategy;
        core_v1::Event => "event" ["ev"] [] => core::event::Events;
        core_v1::LimitRange => "limitrange" ["limits"] [] => core::limitrange::LimitRanges;
        core_v1::Namespace => "namespace" ["ns"] [] status => core::namespace::Namespaces;
        core_v1::Node => "node" ["no"] [] status => core::node::Nodes;
        core_v1::PersistentVolumeClaim => "persistentvolumeclaim" ["pvc"] [] status => core::persistentvolumeclaim::PersistentVolumeClaims;
        core_v1::PersistentVolume => "persistentvolume" ["pv"] [] status => core::persistentvolume::PersistentVolumes;
        core_v1::Pod => "pod" ["po"] ["all"] status generation => core::pod::Pods;
        core_v1::PodTemplate => "podtemplate" [] [] => core::podtemplate::PodTemplates;
        core_v1::ReplicationController => "replicationcontroller" ["rc"] ["all"] status scale generation => core::replicationcontroller::ReplicationControllers;
        core_v1::ResourceQuota => "resourcequota" ["quota"] [] status => core::resourcequota::ResourceQuotas;
        core_v1::Secret => "secret" [] [] => core::secret::Secrets;
        core_v1::ServiceAccount => "serviceaccount" ["sa"] [] => core::serviceaccount::ServiceAccounts;
        core_v1::Service => "service" ["svc"] ["all"] status => core::service::Services;
        apiregistration_v1::APIService => "apiservice" [] ["api-extensions"] status => apiregistration::apiservice::APIServices;
        apps_v1::ControllerRevision => "controllerrevision" [] [] => apps::controllerrevision::ControllerRevisions;
        apps_v1::DaemonSet => "daemonset" ["ds"] ["all"] status generation => apps::daemonset::DaemonSets;
        apps_v1::Deployment => "deployment" ["deploy"] ["all"] status scale generation => apps::deployment::Deployments;
        apps_v1::ReplicaSet => "replicaset" ["rs"] ["all"] status scale generation => apps::replicaset::ReplicaSets;
        apps_v1::StatefulSet => "statefulset" ["sts"] ["all"] status scale generation => apps::statefulset::StatefulSets;
        events_v1::Event => "event" ["ev"] [] => events::event::Events;
    };
    types.insert(0, review::<core_v1::Binding>("binding", &core::binding::Bindings));
    types.push(review::<authentication_v1::TokenReview>(
        "tokenreview",
        &authentication::tokenreview::TokenReviews,
    ));
    types.push(review::<authentication_v1::SelfSubjectReview>(
        "selfsubjectreview",
        &authentication::selfsubjectreview::SelfSubjectReviews,
    ));
    types.push(review::<authorization_v1::LocalSubjectAccessReview>(
        "localsubjectaccessreview",
        &authorization::subjectaccessreview::LocalSubjectAccessReviews,
    ));
    types.push(review::<authorization_v1::SelfSubjectAccessReview>(
        "selfsubjectaccessreview",
        &authorization::subjectaccessreview::SelfSubjectAccessReviews,
    ));
    types.push(review::<authorization_v1::SelfSubjectRulesReview>(
        "selfsubjectrulesreview",
        &authorization::selfsubjectrulesreview::SelfSubjectRulesReviews,
    ));
    types.push(review::<authorization_v1::SubjectAccessReview>(
        "subjectaccessreview",
        &authorization::subjectaccessreview::SubjectAccessReviews,
    ));
    types.extend(builtins! {
        autoscaling_v2::HorizontalPodAutoscaler => "horizontalpodautoscaler" ["hpa"] ["all"] status generation => autoscaling::horizontalpodautoscaler::HorizontalPodAutoscalers;
        autoscaling_v1::HorizontalPodAutoscaler => "horizontalpodautoscaler" ["hpa"] ["all"] status generation => autoscaling::horizontalpodautoscaler::HorizontalPodAutoscalers;
        batch_v1::CronJob => "cronjob" ["cj"] ["all"] status generation => batch::cronjob::CronJobs;
        batch_v1::Job => "job" [] ["all"] status generation => batch::job::Jobs;
        certificates_v1::CertificateSigningRequest => "certificatesigningrequest" ["csr"] [] status => certificates::certificatesigningrequest::CertificateSigningRequests;
        certificates_v1::ClusterTrustBundle => "clustertrustbundle" [] [] => certificates::clustertrustbundle::ClusterTrustBundles;
        certificates_v1::PodCertificateRequest => "podcertificaterequest" [] [] status => certificates::podcertificaterequest::PodCertificateRequests;
        networking_v1::IngressClass => "ingressclass" [] [] => networking::ingressclass::IngressClasses;
        networking_v1::Ingress => "ingress" ["ing"] [] status generation => networking::ingress::Ingresses;
        networking_v1::IPAddress => "ipaddress" ["ip"] [] => networking::ipaddress::IPAddresses;
        networking_v1::NetworkPolicy => "networkpolicy" ["netpol"] [] generation => networking::networkpolicy::NetworkPolicies;
        networking_v1::ServiceCIDR => "servicecidr" [] [] status => networking::servicecidr::ServiceCIDRs;
        policy_v1::PodDisruptionBudget => "poddisruptionbudget" ["pdb"] [] status generation => policy::poddisruptionbudget::PodDisruptionBudgets;
        rbac_v1::ClusterRoleBinding => "clusterrolebinding" [] [] => rbac::clusterrolebinding::ClusterRoleBindings;
        rbac_v1::ClusterRole => "clusterrole" [] [] => rbac::clusterrole::ClusterRoles;
        rbac_v1::RoleBinding => "rolebinding" [] [] => rbac::rolebinding::RoleBindings;
        rbac_v1::Role => "role" [] [] => rbac::role::Roles;
        storage_v1::CSIDriver => "csidriver" [] [] => storage::csidriver::CSIDrivers;
        storage_v1::CSINode => "csinode" [] [] => storage::csinode::CSINodes;
        storage_v1::CSIStorageCapacity => "csistoragecapacity" [] [] => storage::csistoragecapacity::CSIStorageCapacities;
        storage_v1::StorageClass => "storageclass" ["sc"] [] => storage::storageclass::StorageClasses;
        storage_v1::VolumeAttachment => "volumeattachment" [] [] status => storage::volumeattachment::VolumeAttachments;
        storage_v1::VolumeAttributesClass => "volumeattributesclass" ["vac"] [] => storage::volumeattributesclass::VolumeAttributesClasses;
        storagemigration_v1::StorageVersionMigration => "storageversionmigration" [] [] status => storagemigration::storageversionmigration::StorageVersionMigrations;
        admissionregistration_v1::MutatingAdmissionPolicy => "mutatingadmissionpolicy" [] ["api-extensions"] generation => admissionregistration::mutatingadmissionpolicy::MutatingAdmissionPolicies;
        admissionregistration_v1::MutatingAdmissionPolicyBinding => "mutatingadmissionpolicybinding" [] ["api-extensions"] generation => admissionregistration::mutatingadmissionpolicybinding::MutatingAdmissionPolicyBindings;
        admissionregistration_v1::MutatingWebhookConfiguration => "mutatingwebhookconfiguration" [] ["api-extensions"] => admissionregistration::mutatingwebhookconfiguration::MutatingWebhookConfigurations;
        admissionregistration_v1::ValidatingAdmissionPolicy => "validatingadmissionpolicy" [] ["api-extensions"] status generation => admissionregistration::validatingadmissionpolicy::ValidatingAdmissionPolicies;
        admissionregistration_v1::ValidatingAdmissionPolicyBinding => "validatingadmissionpolicybinding" [] ["api-extensions"] generation => admissionregistration::validatingadmissionpolicybinding::ValidatingAdmissionPolicyBindings;
        admissionregistration_v1::ValidatingWebhookConfiguration => "validatingwebhookconfiguration" [] ["api-extensions"] => admissionregistration::validatingwebhookconfiguration::ValidatingWebhookConfigurations;
        apiextensions_v1::CustomResourceDefinition => "customresourcedefinition" ["crd", "crds"] ["api-extensions"] status generation => apiextensions::customresourcedefinition::CustomResourceDefinitions;
        scheduling_v1::PriorityClass => "priorityclass" ["pc"] [] => scheduling::priorityclass::PriorityClasses;
        coordination_v1::Lease => "lease" [] [] => coordination::lease::Leases;
        node_v1::RuntimeClass => "runtimeclass" [] [] => node::runtimeclass::RuntimeClasses;
        discovery_v1::EndpointSlice => "endpointslice" [] [] => discovery::endpointslice::EndpointSlices;
        flowcontrol_v1::FlowSchema => "flowschema" [] [] status generation => flowcontrol::flowschema::FlowSchemas;
        flowcontrol_v1::PriorityLevelConfiguration => "prioritylevelconfiguration" [] [] status generation => flowcontrol::prioritylevelconfiguration::PriorityLevelConfigurations;
        resource_v1::DeviceClass => "deviceclass" [] [] generation => resource::deviceclass::DeviceClasses;
        resource_v1::ResourceClaim => "resourceclaim" [] [] status generation => resource::resourceclaim::ResourceClaims;
        resource_v1::ResourceClaimTemplate => "resourceclaimtemplate" [] [] generation => resource::resourceclaimtemplate::ResourceClaimTemplates;
        resource_v1::ResourceSlice => "resourceslice" [] [] generation => resource::resourceslice::ResourceSlices;
        metrics::NodeMetrics => "nodemetrics" [] [] => metrics::nodemetrics::NodeMetricsStrategy;
        metrics::PodMetrics => "podmetrics" [] [] => metrics::podmetrics::PodMetricsStrategy;
    });
    for rt in &mut types {
        // autoscaling/v1 is served over v2's storage.
        if rt.group == "autoscaling" && rt.version == "v1" {
            rt.conversion = Some(crate::resources::Conversion {
                storage_group: "autoscaling",
                storage_version: "autoscaling/v2",
                from_storage: autoscaling::horizontalpodautoscaler::v2_to_v1,
                to_storage: autoscaling::horizontalpodautoscaler::v1_to_v2,
            });
        }
        // events.k8s.io/v1 serves the core group's events in their newer shape.
        if rt.group == "events.k8s.io" {
            rt.conversion = Some(crate::resources::Conversion {
                storage_group: "",
                storage_version: "v1",
                from_storage: events::event::from_core,
                to_storage: events::event::to_core,
            });
        }
    }
    types
}

// Here rather than in `resources.rs`, so the type table depends on no registry entry.
impl crate::resources::Registry {
    /// A registry of the built-in types.
    pub fn new() -> Self {
        Self::with_types(builtin_types())
    }
}

impl Default for crate::resources::Registry {
    fn default() -> Self {
        crate::resources::Registry::new()
    }
}
