//! Certificate signing requests (PKCS#10): reading what one asks for, and signing it with the
//! cluster CA for the usages and lifetime a `CertificateSigningRequest` object grants (the
//! request's own extensions are not trusted for that, as upstream's signer ignores them).

use std::net::IpAddr;

use rcgen::{
    CertificateSigningRequestParams, DnType, DnValue, ExtendedKeyUsagePurpose, KeyUsagePurpose,
    SanType,
};

use crate::{Pki, PkiError, cert};

/// What a request asks for, as the signers' rules read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CsrInfo {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub emails: Vec<String>,
    pub uris: Vec<String>,
}

fn text(value: &DnValue) -> String {
    match value {
        DnValue::Utf8String(s) => s.clone(),
        DnValue::PrintableString(s) => s.as_str().to_owned(),
        DnValue::Ia5String(s) => s.as_str().to_owned(),
        // Other encodings do not occur in what Kubernetes clients send; kept recognisable.
        other => format!("{other:?}"),
    }
}

fn parse(pem: &str) -> Result<CertificateSigningRequestParams, PkiError> {
    CertificateSigningRequestParams::from_pem(pem).map_err(cert("signing request"))
}

/// Reads a PEM `CERTIFICATE REQUEST` (its signature checked).
pub fn inspect(pem: &str) -> Result<CsrInfo, PkiError> {
    let request = parse(pem)?;
    let mut info = CsrInfo::default();
    for (kind, value) in request.params.distinguished_name.iter() {
        match kind {
            DnType::CommonName => info.common_name = text(value),
            DnType::OrganizationName => info.organizations.push(text(value)),
            _ => {}
        }
    }
    for san in &request.params.subject_alt_names {
        match san {
            SanType::DnsName(name) => info.dns_names.push(name.as_str().to_owned()),
            SanType::IpAddress(ip) => info.ip_addresses.push(*ip),
            SanType::Rfc822Name(email) => info.emails.push(email.as_str().to_owned()),
            SanType::URI(uri) => info.uris.push(uri.as_str().to_owned()),
            _ => {}
        }
    }
    Ok(info)
}

/// A new key (ECDSA P-256) and a PEM certificate request for `common_name` in
/// `organizations`: (request, key).
pub fn new_request(
    common_name: &str,
    organizations: &[&str],
) -> Result<(String, String), PkiError> {
    new_request_for(common_name, organizations, &[])
}

/// As [`new_request`], asking for `sans` (DNS names or IP addresses) too.
pub fn new_request_for(
    common_name: &str,
    organizations: &[&str],
    sans: &[String],
) -> Result<(String, String), PkiError> {
    let key = rcgen::KeyPair::generate().map_err(cert("key"))?;
    let mut params = rcgen::CertificateParams::new(sans.to_vec()).map_err(cert("request"))?;
    params.distinguished_name = crate::name(common_name, organizations);
    let request = params.serialize_request(&key).map_err(cert("request"))?;
    Ok((request.pem().map_err(cert("request"))?, key.serialize_pem()))
}

impl Pki {
    /// Signs `pem` with the cluster CA for `usages` (upstream's names: `client auth`,
    /// `server auth`, `digital signature`, `key encipherment`, …), valid from five minutes ago
    /// (clock skew; a tenth of a short life) for `seconds`, but never past the CA's own end.
    /// Returns the certificate PEM.
    pub fn sign_request(
        &self,
        pem: &str,
        usages: &[String],
        seconds: u64,
    ) -> Result<String, PkiError> {
        let mut request = parse(pem)?;
        let params = &mut request.params;
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = usages
            .iter()
            .filter_map(|u| match u.as_str() {
                "digital signature" => Some(KeyUsagePurpose::DigitalSignature),
                "key encipherment" => Some(KeyUsagePurpose::KeyEncipherment),
                "content commitment" => Some(KeyUsagePurpose::ContentCommitment),
                "data encipherment" => Some(KeyUsagePurpose::DataEncipherment),
                "key agreement" => Some(KeyUsagePurpose::KeyAgreement),
                "cert sign" => Some(KeyUsagePurpose::KeyCertSign),
                "crl sign" => Some(KeyUsagePurpose::CrlSign),
                _ => None,
            })
            .collect();
        params.extended_key_usages = usages
            .iter()
            .filter_map(|u| match u.as_str() {
                "client auth" => Some(ExtendedKeyUsagePurpose::ClientAuth),
                "server auth" => Some(ExtendedKeyUsagePurpose::ServerAuth),
                "code signing" => Some(ExtendedKeyUsagePurpose::CodeSigning),
                "email protection" => Some(ExtendedKeyUsagePurpose::EmailProtection),
                "timestamping" => Some(ExtendedKeyUsagePurpose::TimeStamping),
                "ocsp signing" => Some(ExtendedKeyUsagePurpose::OcspSigning),
                _ => None,
            })
            .collect();
        let now = time::OffsetDateTime::now_utc();
        // Back-dated for clocks a little behind ours: five minutes, or a tenth of a short
        // life (so that 80% of the life, when holders renew, stays ahead of now).
        let backdate = (seconds / 10).min(300);
        params.not_before = now - time::Duration::seconds(i64::try_from(backdate).unwrap_or(300));
        let wanted = now
            + time::Duration::seconds(
                i64::try_from(seconds).unwrap_or(i64::MAX / 2).min(100 * 365 * 86_400),
            );
        params.not_after = wanted.min(self.ca_not_after()?);
        let mut serial = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut serial).map_err(
            |_| PkiError::SigningKey {
                path: self.dir.join("ca.key"),
                reason: "no random numbers".to_owned(),
            },
        )?;
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let issued = request.signed_by(&self.issuer()?).map_err(cert("signed"))?;
        Ok(issued.pem())
    }

    fn ca_not_after(&self) -> Result<time::OffsetDateTime, PkiError> {
        validity(&self.ca_cert_pem)
            .and_then(|(_, end)| time::OffsetDateTime::from_unix_timestamp(end).ok())
            .ok_or_else(|| PkiError::SigningKey {
                path: self.dir.join("ca.crt"),
                reason: "unreadable CA certificate".to_owned(),
            })
    }
}

/// (not before, not after) of a PEM certificate, Unix seconds.
pub fn validity(cert_pem: &str) -> Option<(i64, i64)> {
    let der = rustls_pemfile_first(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some((cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp()))
}

/// The DER of the first PEM block.
fn rustls_pemfile_first(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(cn: &str, orgs: &[&str], sans: &[&str]) -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name = crate::name(cn, orgs);
        params.serialize_request(&key).expect("csr").pem().expect("pem")
    }

    #[test]
    fn a_request_is_read_and_signed_for_what_is_granted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::load_or_create(dir.path(), &["localhost".to_owned()]).expect("pki");
        let pem = request("system:node:n1", &["system:nodes"], &["n1", "10.0.0.7"]);
        let info = inspect(&pem).expect("inspects");
        assert_eq!(info.common_name, "system:node:n1");
        assert_eq!(info.organizations, ["system:nodes"]);
        assert_eq!(info.dns_names, ["n1"]);
        assert_eq!(info.ip_addresses, ["10.0.0.7".parse::<IpAddr>().expect("ip")]);
        let usages = ["digital signature".to_owned(), "server auth".to_owned()];
        let signed = pki.sign_request(&pem, &usages, 3600).expect("signs");
        let der = rustls_pemfile_first(&signed).expect("pem");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
        let lifetime =
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(lifetime, 3600 + 300);
        let short = pki.sign_request(&pem, &usages, 30).expect("signs");
        let der = rustls_pemfile_first(&short).expect("pem");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
        assert_eq!(
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp(),
            33
        );
        let eku = cert.extended_key_usage().expect("eku").expect("present");
        assert!(eku.value.server_auth && !eku.value.client_auth);
        assert!(
            inspect(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
            )
            .is_err()
        );
    }
}
