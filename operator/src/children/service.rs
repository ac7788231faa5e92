//! The Service in front of the workload pods.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{HTTP_PORT_NAME, metadata};
use crate::api::Validated;
use crate::names::selector_labels;

/// Build the Service: `spec.service.port` forwarded to the pods' named `http` port.
pub fn build(valid: &Validated) -> Service {
    let settings = &valid.spec.service;
    Service {
        metadata: metadata(&valid.owner),
        spec: Some(ServiceSpec {
            type_: Some(settings.type_.as_str().to_string()),
            selector: Some(selector_labels(&valid.owner.name)),
            ports: Some(vec![ServicePort {
                name: Some(HTTP_PORT_NAME.to_string()),
                port: settings.port,
                target_port: Some(IntOrString::String(HTTP_PORT_NAME.to_string())),
                protocol: Some("TCP".to_string()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::test_support::valid;

    #[test]
    fn defaults() {
        let spec = build(&valid("")).spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        let port = &spec.ports.unwrap()[0];
        assert_eq!(port.name.as_deref(), Some("http"));
        assert_eq!(port.port, 80);
        assert_eq!(
            port.target_port,
            Some(IntOrString::String("http".to_string()))
        );
        let selector = spec.selector.unwrap();
        assert_eq!(selector["app.kubernetes.io/name"], "workload");
        assert_eq!(selector["app.kubernetes.io/instance"], "demo");
    }

    #[test]
    fn type_and_port_from_the_spec() {
        for kind in ["NodePort", "LoadBalancer", "ClusterIP"] {
            let spec = build(&valid(&format!("service: {{type: {kind}, port: 8080}}")))
                .spec
                .unwrap();
            assert_eq!(spec.type_.as_deref(), Some(kind));
            assert_eq!(spec.ports.unwrap()[0].port, 8080);
        }
    }

    #[test]
    fn unknown_service_type_is_rejected_when_parsing() {
        let err = serde_yaml::from_str::<crate::api::crd::SandboxServiceSpec>(
            "service: {type: ExternalName}",
        )
        .unwrap_err();
        assert!(err.to_string().contains("ExternalName"), "{err}");
    }
}
