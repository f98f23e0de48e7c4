//! OAuth 2.0 bearer JWTs from an identity provider (`[jwt]`): the signature
//! by a key from the provider's JWKS (fetched, cached, fetched again on an
//! unknown `kid` at most once a minute) or from a static key file; the
//! algorithm from an allow-list (`none` is never one); `exp` required,
//! `nbf`, `iss` and `aud` checked; toplog roles from a claim.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::{AuthError, Role};

/// The longest token taken; past it, `invalid_token` without decoding.
const MAX_TOKEN_BYTES: usize = 8 << 10;

/// `[jwt]` in the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Allowed algorithms, e.g. `["RS256"]` (the default).
    pub algorithms: Option<Vec<String>>,
    /// Where the provider publishes its keys (JWKS).
    pub jwks_url: Option<String>,
    /// A static HMAC secret, for HS256.
    pub hs256_secret_file: Option<PathBuf>,
    /// A static public key (PEM), RSA or EC.
    pub public_key_file: Option<PathBuf>,
    /// Clock leeway for `exp` and `nbf` (default `60s`).
    pub leeway: Option<String>,
    /// How often a token with an unknown `kid` may make the node fetch the
    /// JWKS again (default `60s`).
    pub jwks_refetch_interval: Option<String>,
    /// Where the roles are: a claim path such as `roles`,
    /// `realm_access.roles` or `scope` (default `roles`).
    pub roles_claim: Option<String>,
    /// Claim values to toplog roles; by default a value equal to a role's
    /// name is that role.
    pub role_map: Option<HashMap<String, String>>,
}

/// Where the keys come from.
enum Keys {
    Static(DecodingKey),
    Jwks {
        url: String,
        keys: RwLock<HashMap<String, DecodingKey>>,
        fetched: Mutex<Option<Instant>>,
    },
}

/// A configured JWT verifier.
pub(crate) struct Jwt {
    algorithms: Vec<Algorithm>,
    issuer: String,
    audience: String,
    leeway: u64,
    refetch_every: Duration,
    roles_claim: Vec<String>,
    role_map: HashMap<String, Role>,
    keys: Keys,
    client: reqwest::Client,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl Jwt {
    /// The verifier `[jwt]` describes; `None` without `[jwt]`.
    pub(crate) fn new(s: &JwtSettings) -> anyhow::Result<Option<Self>> {
        if *s == JwtSettings::default() {
            return Ok(None);
        }
        let issuer = s.issuer.clone().context("`jwt.issuer` is required")?;
        let audience = s.audience.clone().context("`jwt.audience` is required")?;
        let names = s.algorithms.clone().unwrap_or_else(|| vec!["RS256".into()]);
        let mut algorithms = Vec::new();
        for name in &names {
            if name.eq_ignore_ascii_case("none") {
                anyhow::bail!("`jwt.algorithms`: `none` is never accepted");
            }
            algorithms.push(name.parse::<Algorithm>().map_err(|_| {
                anyhow::anyhow!("`jwt.algorithms`: `{name}` is not a JWT algorithm")
            })?);
        }
        let hmac = algorithms
            .iter()
            .any(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512));
        let keys = match (&s.jwks_url, &s.hs256_secret_file, &s.public_key_file) {
            (Some(url), None, None) => Keys::Jwks {
                url: url.clone(),
                keys: RwLock::new(HashMap::new()),
                fetched: Mutex::new(None),
            },
            (None, Some(file), None) => {
                if algorithms != [Algorithm::HS256] {
                    anyhow::bail!(
                        "`jwt.hs256_secret_file` goes with `jwt.algorithms = [\"HS256\"]` only"
                    );
                }
                let secret = std::fs::read(file)
                    .with_context(|| format!("`jwt.hs256_secret_file` {}", file.display()))?;
                Keys::Static(DecodingKey::from_secret(secret.trim_ascii()))
            }
            (None, None, Some(file)) => {
                if hmac {
                    anyhow::bail!("`jwt.public_key_file` cannot go with an HMAC algorithm");
                }
                let pem = std::fs::read(file)
                    .with_context(|| format!("`jwt.public_key_file` {}", file.display()))?;
                let key = DecodingKey::from_rsa_pem(&pem)
                    .or_else(|_| DecodingKey::from_ec_pem(&pem))
                    .with_context(|| {
                        format!(
                            "`jwt.public_key_file` {}: not an RSA or EC public key (PEM)",
                            file.display()
                        )
                    })?;
                Keys::Static(key)
            }
            _ => anyhow::bail!(
                "`[jwt]` needs exactly one of `jwks_url`, `hs256_secret_file`, `public_key_file`"
            ),
        };
        if hmac && matches!(keys, Keys::Jwks { .. }) {
            anyhow::bail!(
                "`jwt.algorithms`: HMAC algorithms cannot be verified with a JWKS (no key confusion)"
            );
        }
        let leeway = toplog_types::parse_duration(s.leeway.as_deref().unwrap_or("60s"))
            .map_err(|e| anyhow::anyhow!("`jwt.leeway`: {e}"))?
            .as_secs();
        let refetch_every =
            toplog_types::parse_duration(s.jwks_refetch_interval.as_deref().unwrap_or("60s"))
                .map_err(|e| anyhow::anyhow!("`jwt.jwks_refetch_interval`: {e}"))?;
        let role_map = match &s.role_map {
            None => Role::ALL
                .iter()
                .map(|r| (r.name().to_owned(), *r))
                .collect(),
            Some(map) => map
                .iter()
                .map(|(claim, role)| {
                    Role::named(role)
                        .map(|r| (claim.clone(), r))
                        .ok_or_else(|| anyhow::anyhow!("`jwt.role_map`: `{role}` is not a role"))
                })
                .collect::<anyhow::Result<_>>()?,
        };
        Ok(Some(Self {
            algorithms,
            issuer,
            audience,
            leeway,
            refetch_every,
            roles_claim: s
                .roles_claim
                .as_deref()
                .unwrap_or("roles")
                .split('.')
                .map(str::to_owned)
                .collect(),
            role_map,
            keys,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        }))
    }

    /// The subject and roles of a valid token.
    pub(crate) async fn verify(&self, token: &str) -> Result<(String, Vec<Role>), AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::InvalidToken);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::InvalidToken)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::InvalidToken);
        }
        let key = self.key(header.kid.as_deref()).await?;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|e| match e
            .kind()
        {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::ExpiredToken,
            _ => AuthError::InvalidToken,
        })?;
        let claims = data.claims;
        let subject = claims["sub"].as_str().unwrap_or("").to_owned();
        let mut at = &claims;
        for part in &self.roles_claim {
            at = &at[part.as_str()];
        }
        let values: Vec<&str> = match at {
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
            // `scope`: space-separated.
            Value::String(s) => s.split_whitespace().collect(),
            _ => Vec::new(),
        };
        let roles = values
            .iter()
            .filter_map(|v| self.role_map.get(*v).copied())
            .collect();
        Ok((subject, roles))
    }

    /// The key for `kid`: the static key, or one from the JWKS, fetched
    /// again when the `kid` is unknown and the last fetch is a minute old.
    async fn key(&self, kid: Option<&str>) -> Result<DecodingKey, AuthError> {
        match &self.keys {
            Keys::Static(key) => Ok(key.clone()),
            Keys::Jwks { url, keys, fetched } => {
                let kid = kid.ok_or(AuthError::InvalidToken)?;
                if let Some(key) = keys
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(kid)
                {
                    return Ok(key.clone());
                }
                let due = {
                    let mut last = fetched
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let due = last.is_none_or(|t| t.elapsed() >= self.refetch_every);
                    if due {
                        *last = Some(Instant::now());
                    }
                    due
                };
                if due {
                    match self.fetch(url).await {
                        Ok(fresh) => {
                            *keys
                                .write()
                                .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
                        }
                        Err(e) => {
                            tracing::warn!(url, error = %format!("{e:#}"), "cannot fetch the JWKS")
                        }
                    }
                }
                keys.read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(kid)
                    .cloned()
                    .ok_or(AuthError::InvalidToken)
            }
        }
    }

    async fn fetch(&self, url: &str) -> anyhow::Result<HashMap<String, DecodingKey>> {
        let set: JwkSet = self
            .client
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            if let (Some(kid), Ok(key)) = (&jwk.common.key_id, DecodingKey::from_jwk(jwk)) {
                keys.insert(kid.clone(), key);
            }
        }
        Ok(keys)
    }
}
