//! The cluster PKI: a CA, the API serving certificate and the admin client certificate, created
//! on first start in `<data-dir>/server/tls` and reused afterwards; and the admin kubeconfig.
//! Its own crate, with the node join protocol ([`join`]), because both sides use them: the API
//! server issues, the node agent (`krust agent`) joins and writes its credentials, and neither
//! depends on the other.

pub mod csr;
pub mod join;
pub mod jwt;
pub mod tls;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// What can go wrong creating or loading the PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Generating or parsing a certificate or key failed.
    #[error("certificate {what}: {source}")]
    Cert {
        /// Which certificate.
        what: &'static str,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// A signing key could not be made or read.
    #[error("signing key {path}: {reason}")]
    SigningKey {
        /// The key's file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// PEM-encoded material the server needs.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The cluster CA certificate.
    pub ca_cert_pem: String,
    /// The API serving certificate.
    pub serving_cert_pem: String,
    /// Its key.
    pub serving_key_pem: String,
    /// The admin client certificate (`CN=system:admin`, `O=system:masters`).
    pub admin_cert_pem: String,
    /// Its key.
    pub admin_key_pem: String,
    /// Where the files live.
    pub dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io { path: path.to_owned(), source }
}

fn cert(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Cert { what, source }
}

/// Writes `contents` to `path` with mode 0600, atomically.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(contents).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn name(common_name: &str, organizations: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for o in organizations {
        dn.push(DnType::OrganizationName, *o);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

fn validity(params: &mut CertificateParams, years: i16) {
    // Back-date by a day so that clocks slightly behind ours still accept the certificate.
    let today = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).date();
    let start = today.yesterday().unwrap_or(today);
    params.not_before =
        rcgen::date_time_ymd(start.year().into(), start.month() as u8, start.day() as u8);
    params.not_after = rcgen::date_time_ymd(
        (start.year() + years).into(),
        start.month() as u8,
        start.day().min(28) as u8,
    );
}

impl Pki {
    /// Loads the PKI from `dir`, creating whatever is missing. The serving certificate is
    /// re-issued when the wanted SANs are not all in it (a new host address, say).
    pub fn load_or_create(dir: &Path, sans: &[String]) -> Result<Pki, PkiError> {
        Pki::load_or_create_for(dir, sans, ONE_YEAR)
    }

    /// As [`Pki::load_or_create`], with serving and admin certificates valid for `validity`;
    /// one past 80% of its life is issued again (see [`Pki::due`]).
    pub fn load_or_create_for(
        dir: &Path,
        sans: &[String],
        lifetime: std::time::Duration,
    ) -> Result<Pki, PkiError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        // Keys live here: only the owner may enter.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(dir))?;
        }
        let ca_cert_path = dir.join("ca.crt");
        let ca_key_path = dir.join("ca.key");
        let (ca_cert_pem, ca_key) = if ca_cert_path.exists() && ca_key_path.exists() {
            let cert_pem = std::fs::read_to_string(&ca_cert_path).map_err(io(&ca_cert_path))?;
            let key_pem = std::fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
            (cert_pem, KeyPair::from_pem(&key_pem).map_err(cert("ca key"))?)
        } else {
            let key = KeyPair::generate().map_err(cert("ca key"))?;
            let mut params = CertificateParams::default();
            params.distinguished_name = name(&format!("krust-ca@{}", unix_now()), &[]);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            validity(&mut params, 10);
            let ca = params.self_signed(&key).map_err(cert("ca"))?;
            write_private(&ca_key_path, key.serialize_pem().as_bytes())?;
            write_private(&ca_cert_path, ca.pem().as_bytes())?;
            (ca.pem(), key)
        };
        let issuer = Issuer::from_ca_cert_pem(&ca_cert_pem, &ca_key).map_err(cert("ca"))?;

        let serving_cert_path = dir.join("serving.crt");
        let serving_key_path = dir.join("serving.key");
        let sans_path = dir.join("serving.sans");
        let wanted = sans.join("\n");
        let current = std::fs::read_to_string(&sans_path).unwrap_or_default();
        let covered = sans.iter().all(|s| current.lines().any(|l| l == s));
        // Certificates issued by another CA (one adopted from the servers sharing the store)
        // are issued again.
        let issuer_path = dir.join("issuer.sha256");
        let ca_changed = std::fs::read_to_string(&issuer_path)
            .map_or(true, |h| h.trim() != join::ca_hash(&ca_cert_pem));
        let serving_due =
            ca_changed || std::fs::read_to_string(&serving_cert_path).map_or(true, |pem| due(&pem));
        if !(covered && !serving_due && serving_key_path.exists()) {
            let (serving, key) = sign_for(&issuer, "kube-apiserver", &[], Some(sans), lifetime)?;
            write_private(&serving_key_path, key.as_bytes())?;
            write_private(&serving_cert_path, serving.as_bytes())?;
            write_private(&sans_path, wanted.as_bytes())?;
        }

        let admin_cert_path = dir.join("client-admin.crt");
        let admin_key_path = dir.join("client-admin.key");
        let admin_due =
            ca_changed || std::fs::read_to_string(&admin_cert_path).map_or(true, |pem| due(&pem));
        if admin_due || !admin_key_path.exists() {
            let (admin, key) =
                sign_for(&issuer, "system:admin", &["system:masters"], None, lifetime)?;
            write_private(&admin_key_path, key.as_bytes())?;
            write_private(&admin_cert_path, admin.as_bytes())?;
        }
        if ca_changed {
            write_private(&issuer_path, join::ca_hash(&ca_cert_pem).as_bytes())?;
        }
        let read = |p: &Path| std::fs::read_to_string(p).map_err(io(p));
        Ok(Pki {
            ca_cert_pem,
            serving_cert_pem: read(&serving_cert_path)?,
            serving_key_pem: read(&serving_key_path)?,
            admin_cert_pem: read(&admin_cert_path)?,
            admin_key_pem: read(&admin_key_path)?,
            dir: dir.to_owned(),
        })
    }

    /// Issues the serving certificate for `sans` and the admin certificate again when they
    /// are past 80% of their life, writing their files; true when either was. The caller
    /// swaps the serving certificate into its listener and rewrites the admin kubeconfig.
    pub fn renew_due(
        &mut self,
        sans: &[String],
        validity: std::time::Duration,
    ) -> Result<bool, PkiError> {
        let issuer = self.issuer()?;
        let mut renewed = false;
        if due(&self.serving_cert_pem) {
            let (cert, key) = sign_for(&issuer, "kube-apiserver", &[], Some(sans), validity)?;
            write_private(&self.dir.join("serving.key"), key.as_bytes())?;
            write_private(&self.dir.join("serving.crt"), cert.as_bytes())?;
            (self.serving_cert_pem, self.serving_key_pem) = (cert, key);
            renewed = true;
        }
        if due(&self.admin_cert_pem) {
            let (cert, key) =
                sign_for(&issuer, "system:admin", &["system:masters"], None, validity)?;
            write_private(&self.dir.join("client-admin.key"), key.as_bytes())?;
            write_private(&self.dir.join("client-admin.crt"), cert.as_bytes())?;
            (self.admin_cert_pem, self.admin_key_pem) = (cert, key);
            renewed = true;
        }
        Ok(renewed)
    }

    /// The admin kubeconfig for a server reachable at `server_url`.
    pub fn admin_kubeconfig(&self, server_url: &str) -> String {
        kubeconfig(
            &self.ca_cert_pem,
            server_url,
            "krust-admin",
            &self.admin_cert_pem,
            &self.admin_key_pem,
        )
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let key_path = self.dir.join("ca.key");
        let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(cert("ca key"))?;
        Issuer::from_ca_cert_pem(&self.ca_cert_pem, key).map_err(cert("ca"))
    }

    /// Issues a client certificate for `common_name` in `organizations` (a node's
    /// `system:node:<name>` in `system:nodes`, say), returning (certificate, key) PEM.
    pub fn issue_client(
        &self,
        common_name: &str,
        organizations: &[&str],
    ) -> Result<(String, String), PkiError> {
        sign(&self.issuer()?, common_name, organizations, None)
    }

    /// Issues a serving certificate for `sans` (a node agent's HTTPS endpoint), valid for
    /// `validity` from now (the agent renews it at 80% of its life through the Certificates
    /// API), returning (certificate, key) PEM.
    pub fn issue_serving_for(
        &self,
        common_name: &str,
        sans: &[String],
        validity: std::time::Duration,
    ) -> Result<(String, String), PkiError> {
        sign_for(&self.issuer()?, common_name, &[], Some(sans), validity)
    }

    /// As [`Pki::issue_client`], valid for `validity` from now (a node's certificate, which
    /// it renews at 80% of its life through the Certificates API).
    pub fn issue_client_for(
        &self,
        common_name: &str,
        organizations: &[&str],
        validity: std::time::Duration,
    ) -> Result<(String, String), PkiError> {
        let (request, key) = csr::new_request(common_name, organizations)?;
        let cert = self.sign_request(
            &request,
            &["digital signature".to_owned(), "client auth".to_owned()],
            validity.as_secs(),
        )?;
        Ok((cert, key))
    }
}

/// How long the server's own certificates live unless told otherwise.
pub const ONE_YEAR: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// Whether a certificate is past 80% of its life (or unreadable): when its holder renews it.
pub fn due(cert_pem: &str) -> bool {
    let Some((from, to)) = csr::validity(cert_pem) else { return true };
    unix_now() as i64 >= from + (to - from) * 8 / 10
}

/// As [`sign`], valid for `validity` from now (back-dated a little for skewed clocks).
fn sign_for<S: rcgen::SigningKey>(
    issuer: &Issuer<'_, S>,
    common_name: &str,
    organizations: &[&str],
    sans: Option<&[String]>,
    validity: std::time::Duration,
) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(cert("key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name, organizations);
    match sans {
        Some(sans) => {
            params.subject_alt_names = sans
                .iter()
                .filter_map(|s| match s.parse::<IpAddr>() {
                    Ok(ip) => Some(SanType::IpAddress(ip)),
                    Err(_) => s.clone().try_into().ok().map(SanType::DnsName),
                })
                .collect();
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
        None => params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth],
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    let seconds = i64::try_from(validity.as_secs()).unwrap_or(i64::MAX / 4);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::seconds((seconds / 10).min(86_400));
    params.not_after = now + time::Duration::seconds(seconds.min(100 * 365 * 86_400));
    let issued = params.signed_by(&key, issuer).map_err(cert("issued"))?;
    Ok((issued.pem(), key.serialize_pem()))
}

/// Issues a one-year certificate signed by `issuer`: a serving certificate for `sans` when
/// given, else a client certificate. Returns (certificate, key) PEM.
fn sign<S: rcgen::SigningKey>(
    issuer: &Issuer<'_, S>,
    common_name: &str,
    organizations: &[&str],
    sans: Option<&[String]>,
) -> Result<(String, String), PkiError> {
    sign_for(issuer, common_name, organizations, sans, ONE_YEAR)
}

/// A kubeconfig with one cluster, user and context, credentials inline.
pub fn kubeconfig(
    ca_pem: &str,
    server_url: &str,
    user: &str,
    cert_pem: &str,
    key_pem: &str,
) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {}\n  name: krust\ncontexts:\n- context:\n    cluster: krust\n    user: {user}\n  name: krust\ncurrent-context: krust\npreferences: {{}}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b64(ca_pem),
        server_url,
        b64(cert_pem),
        b64(key_pem)
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The serving certificate's SANs for a server with these host addresses and service CIDR.
pub fn default_sans(host_addresses: &[IpAddr], first_service_ip: Option<IpAddr>) -> Vec<String> {
    let mut sans: Vec<String> = vec![
        "localhost".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
        "127.0.0.1".into(),
        "::1".into(),
    ];
    if let Some(ip) = first_service_ip {
        sans.push(ip.to_string());
    }
    for ip in host_addresses {
        let s = ip.to_string();
        if !sans.contains(&s) {
            sans.push(s);
        }
    }
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim().to_owned();
        if !host.is_empty() && !sans.contains(&host) {
            sans.push(host);
        }
    }
    sans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pki_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let sans = default_sans(&["10.0.0.5".parse().unwrap()], Some("10.43.0.1".parse().unwrap()));
        let first = Pki::load_or_create(dir.path(), &sans).unwrap();
        let second = Pki::load_or_create(dir.path(), &sans).unwrap();
        assert_eq!(first.ca_cert_pem, second.ca_cert_pem);
        assert_eq!(first.serving_cert_pem, second.serving_cert_pem);
        assert_eq!(first.admin_cert_pem, second.admin_cert_pem);
        let pem = x509_parser::pem::parse_x509_pem(first.admin_cert_pem.as_bytes()).unwrap().1;
        let parsed = pem.parse_x509().unwrap();
        let org: Vec<_> =
            parsed.subject().iter_organization().filter_map(|o| o.as_str().ok()).collect();
        assert_eq!(org, ["system:masters"]);
        let serving =
            x509_parser::pem::parse_x509_pem(first.serving_cert_pem.as_bytes()).unwrap().1;
        let serving = serving.parse_x509().unwrap();
        let san = serving.subject_alternative_name().unwrap().unwrap();
        let text = format!("{:?}", san.value.general_names);
        for want in ["kubernetes.default.svc.cluster.local", "10.43.0.1", "10.0.0.5", "127.0.0.1"] {
            assert!(
                text.contains(want) || text.contains(&want.replace('.', ", ")),
                "SAN {want} missing: {text}"
            );
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
