//! TLS on the node's one port (REST, gRPC and OTLP alike): rustls, TLS 1.2
//! and 1.3 only, HTTP/2 or HTTP/1.1 chosen by ALPN. The certificate and key
//! are read again when their files change or on SIGHUP, without a restart;
//! a reload that fails keeps the certificate in use. With a client CA the
//! node asks for client certificates, and with `require_client_cert`
//! refuses connections without one. `toplog cert` writes a CA and
//! certificates for trying it out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use x509_parser::extensions::GeneralName;

use crate::auth::{ClientCert, Role};

/// `[tls]` in the configuration file, with the flags over it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The node's certificate chain (PEM), leaf first.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// CAs whose client certificates the node verifies (PEM).
    pub client_ca_file: Option<PathBuf>,
    /// Refuse connections without a verified client certificate.
    pub require_client_cert: Option<bool>,
    /// Roles of verified client certificates, by name: a certificate whose
    /// subject common name, DNS name or URI is listed has that role (a
    /// cluster peer's certificate maps to `peer`). Others carry no role: their
    /// callers show a key or token as anyone does.
    pub client_roles: Option<BTreeMap<String, String>>,
}

impl TlsSettings {
    /// `self`'s fields, else `other`'s.
    pub(crate) fn or(self, other: Self) -> Self {
        Self {
            cert_file: self.cert_file.or(other.cert_file),
            key_file: self.key_file.or(other.key_file),
            client_ca_file: self.client_ca_file.or(other.client_ca_file),
            require_client_cert: self.require_client_cert.or(other.require_client_cert),
            client_roles: self.client_roles.or(other.client_roles),
        }
    }

    /// Whether TLS is on; refuses half a configuration.
    pub(crate) fn check(&self) -> anyhow::Result<bool> {
        if let Some(roles) = &self.client_roles {
            if self.client_ca_file.is_none() {
                anyhow::bail!(
                    "`tls.client_roles` needs `tls.client_ca_file`: only verified certificates carry a role"
                );
            }
            for (name, role) in roles {
                if Role::named(role).is_none() {
                    anyhow::bail!(
                        "`tls.client_roles.\"{name}\"`: `{role}` is not one of {}",
                        crate::auth::ROLE_NAMES.join(", ")
                    );
                }
            }
        }
        match (&self.cert_file, &self.key_file) {
            (None, None)
                if self.client_ca_file.is_some() || self.require_client_cert == Some(true) =>
            {
                anyhow::bail!(
                    "`tls.client_ca_file` and `tls.require_client_cert` need `tls.cert_file` and `tls.key_file`"
                )
            }
            (None, None) => Ok(false),
            (Some(_), None) => anyhow::bail!("`tls.cert_file` is set but `tls.key_file` is not"),
            (None, Some(_)) => anyhow::bail!("`tls.key_file` is set but `tls.cert_file` is not"),
            (Some(_), Some(_))
                if self.require_client_cert == Some(true) && self.client_ca_file.is_none() =>
            {
                anyhow::bail!("`tls.require_client_cert` needs `tls.client_ca_file`")
            }
            (Some(_), Some(_)) => Ok(true),
        }
    }

    fn files(&self) -> Vec<&Path> {
        [&self.cert_file, &self.key_file, &self.client_ca_file]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
            .collect()
    }
}

/// The TLS configuration in use, swapped whole on reload.
pub(crate) struct Tls {
    settings: TlsSettings,
    current: RwLock<Arc<ServerConfig>>,
    /// Modification times of the files, as last loaded.
    loaded: Mutex<Vec<Option<SystemTime>>>,
}

/// How often the files are looked at for changes.
const WATCH_EVERY: Duration = Duration::from_secs(2);

impl Tls {
    /// Loads the files; an error names the file and what is wrong with it.
    pub(crate) fn load(settings: TlsSettings) -> anyhow::Result<Arc<Self>> {
        let stamps = stamps(&settings);
        let config = server_config(&settings)?;
        Ok(Arc::new(Self {
            settings,
            current: RwLock::new(Arc::new(config)),
            loaded: Mutex::new(stamps),
        }))
    }

    /// The role of a connection's verified client certificate chain (leaf
    /// first), if its leaf names a listed name.
    pub(crate) fn client_identity(&self, chain: &[CertificateDer<'_>]) -> Option<ClientCert> {
        let roles = self.settings.client_roles.as_ref()?;
        let (_, leaf) = x509_parser::parse_x509_certificate(chain.first()?).ok()?;
        let common_names = leaf
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok());
        let alternatives = leaf
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| san.value.general_names.iter())
            .into_iter()
            .flatten()
            .filter_map(|n| match n {
                GeneralName::DNSName(s) | GeneralName::URI(s) => Some(*s),
                _ => None,
            });
        common_names.chain(alternatives).find_map(|name| {
            let role = Role::named(roles.get(name)?)?;
            Some(ClientCert {
                name: name.to_owned(),
                role,
            })
        })
    }

    /// An acceptor with the configuration in use now.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        tokio_rustls::TlsAcceptor::from(config)
    }

    /// Reads the files again; on failure the configuration in use stays.
    pub(crate) fn reload(&self) -> anyhow::Result<()> {
        let stamps = stamps(&self.settings);
        let config = server_config(&self.settings)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(config);
        *self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = stamps;
        Ok(())
    }

    /// Reloads on SIGHUP and whenever a file's modification time changes.
    pub(crate) async fn watch(self: Arc<Self>) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; TLS files are still watched");
                None
            }
        };
        let mut tick = tokio::time::interval(WATCH_EVERY);
        loop {
            let why = tokio::select! {
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => "SIGHUP",
                _ = tick.tick() => {
                    let now = stamps(&self.settings);
                    let before = self.loaded.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
                    if now == before {
                        continue;
                    }
                    "a changed file"
                }
            };
            let tls = self.clone();
            match tokio::task::spawn_blocking(move || tls.reload()).await {
                Ok(Ok(())) => tracing::info!(after = why, "TLS certificate reloaded"),
                Ok(Err(e)) => {
                    tracing::error!(after = why, error = %format!("{e:#}"), "TLS reload failed; the certificate in use stays");
                    // Not again for the same files.
                    *self
                        .loaded
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        stamps(&self.settings);
                }
                Err(e) => tracing::error!(error = %e, "TLS reload task failed"),
            }
        }
    }
}

fn stamps(settings: &TlsSettings) -> Vec<Option<SystemTime>> {
    settings
        .files()
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

fn server_config(s: &TlsSettings) -> anyhow::Result<ServerConfig> {
    let (Some(cert_file), Some(key_file)) = (&s.cert_file, &s.key_file) else {
        anyhow::bail!("TLS needs `tls.cert_file` and `tls.key_file`");
    };
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| {
            format!(
                "`tls.cert_file` {}: not a PEM certificate chain",
                cert_file.display()
            )
        })?;
    if chain.is_empty() {
        anyhow::bail!(
            "`tls.cert_file` {}: no certificate in it",
            cert_file.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key_file).with_context(|| {
        format!(
            "`tls.key_file` {}: not a PEM private key",
            key_file.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS 1.2 and 1.3")?;
    let builder = match &s.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let mut roots = rustls::RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(ca_file)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| {
                    format!(
                        "`tls.client_ca_file` {}: not PEM certificates",
                        ca_file.display()
                    )
                })?;
            for ca in cas {
                roots
                    .add(ca)
                    .with_context(|| format!("`tls.client_ca_file` {}", ca_file.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if s.require_client_cert == Some(true) {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .with_context(|| format!("`tls.client_ca_file` {}", ca_file.display()))?,
            )
        }
    };
    let mut config = builder.with_single_cert(chain, key).with_context(|| {
        format!(
            "`tls.key_file` {} does not go with `tls.cert_file` {}",
            key_file.display(),
            cert_file.display()
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// What `toplog cert` wrote.
pub(crate) struct Written(pub(crate) Vec<PathBuf>);

/// Writes a self-signed CA (`ca.pem`, `ca.key`), a node certificate for
/// `hosts` signed by it (`node.pem`, `node.key`) and a client certificate
/// (`client.pem`, `client.key`) into `dir`; keys are mode 0600.
pub(crate) fn write_certificates(dir: &Path, hosts: &[String]) -> anyhow::Result<Written> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "toplog test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::from_params(&ca, &ca_key);
    let leaf = |names: Vec<String>, common_name: &str, usages: Vec<ExtendedKeyUsagePurpose>| {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages;
        let cert = params.signed_by(&key, &issuer)?;
        Ok::<_, rcgen::Error>((cert.pem(), key.serialize_pem()))
    };
    // A node is a server, and a client of its peers.
    let (node_pem, node_key) = leaf(
        hosts.to_vec(),
        "toplog node",
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )?;
    let (client_pem, client_key) = leaf(
        Vec::new(),
        "toplog client",
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    let files = [
        ("ca.pem", ca_cert.pem(), false),
        ("ca.key", ca_key.serialize_pem(), true),
        ("node.pem", node_pem, false),
        ("node.key", node_key, true),
        ("client.pem", client_pem, false),
        ("client.key", client_key, true),
    ];
    let mut written = Vec::new();
    for (name, text, secret) in files {
        let path = dir.join(name);
        if secret {
            crate::lock::write_private(&path, text.as_bytes())?;
        } else {
            std::fs::write(&path, text.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        written.push(path);
    }
    Ok(Written(written))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn generated_certificates_make_a_configuration_and_half_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_certificates(dir.path(), &["127.0.0.1".into(), "localhost".into()]).unwrap();
        let settings = TlsSettings {
            cert_file: Some(dir.path().join("node.pem")),
            key_file: Some(dir.path().join("node.key")),
            client_ca_file: Some(dir.path().join("ca.pem")),
            require_client_cert: Some(true),
            client_roles: None,
        };
        assert!(settings.check().unwrap());
        let tls = Tls::load(settings.clone()).unwrap();
        tls.reload().unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // The client's key with the node's certificate: named, not a panic.
        let mismatched = TlsSettings {
            key_file: Some(dir.path().join("client.key")),
            ..settings.clone()
        };
        let e = format!("{:#}", Tls::load(mismatched).err().unwrap());
        assert!(e.contains("does not go with"), "{e}");
        let e = TlsSettings {
            key_file: None,
            ..settings
        }
        .check()
        .unwrap_err()
        .to_string();
        assert!(e.contains("tls.key_file"), "{e}");
    }
}
