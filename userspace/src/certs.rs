//! What the certificates edged serves say (subject, issuer, validity), for `edgectl certs`,
//! the admin endpoint's `/certificates` and the expiry metric; and which are close to expiry.

use std::time::Duration;

use anyhow::Context as _;
use edgeplane_dataplane::tls::{CertRole, ServedCert};
use serde::{Deserialize, Serialize};

/// One served certificate, read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    #[serde(flatten)]
    pub role: CertRole,
    /// The names it is served for (an app's hosts; the datacenter's name; none: the default).
    pub names: Vec<String>,
    pub subject: String,
    pub issuer: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

impl CertInfo {
    /// Reads `served`'s leaf certificate.
    pub fn of(served: &ServedCert) -> anyhow::Result<Self> {
        let leaf = served.chain.first().context("an empty certificate chain")?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| anyhow::anyhow!("reading the certificate: {e}"))?;
        let validity = cert.validity();
        Ok(Self {
            role: served.role.clone(),
            names: served.names.clone(),
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
        })
    }

    /// Whose it is, as a person reads it.
    pub fn whose(&self) -> String {
        match &self.role {
            CertRole::Default => "default".to_owned(),
            CertRole::App(app) => format!("app {app}"),
            CertRole::Datacenter => "datacenter (peers)".to_owned(),
        }
    }
}

/// How close a certificate is to its end at `now` (unix seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    Valid {
        days_left: i64,
    },
    /// Within `warn` of its end.
    Soon {
        days_left: i64,
    },
    Expired {
        days_ago: i64,
    },
    /// Not valid yet.
    NotYet,
}

pub fn expiry(cert: &CertInfo, now: i64, warn: Duration) -> Expiry {
    const DAY: i64 = 86_400;
    let left = cert.not_after.saturating_sub(now);
    if now < cert.not_before {
        Expiry::NotYet
    } else if left < 0 {
        Expiry::Expired {
            days_ago: left.saturating_neg() / DAY,
        }
    } else if left < i64::try_from(warn.as_secs()).unwrap_or(i64::MAX) {
        Expiry::Soon {
            days_left: left / DAY,
        }
    } else {
        Expiry::Valid {
            days_left: left / DAY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(not_before: i64, not_after: i64) -> CertInfo {
        CertInfo {
            role: CertRole::App("shop".into()),
            names: vec!["shop.test".into()],
            subject: "CN=shop.test".into(),
            issuer: "CN=ca".into(),
            not_before,
            not_after,
        }
    }

    #[test]
    fn a_certificate_warns_inside_the_window_and_says_when_it_expired() {
        let day = 86_400;
        let warn = Duration::from_secs(30 * 86_400);
        let now = 1_000 * day;
        assert_eq!(
            expiry(&cert(0, now + 90 * day), now, warn),
            Expiry::Valid { days_left: 90 }
        );
        assert_eq!(
            expiry(&cert(0, now + 12 * day + 5), now, warn),
            Expiry::Soon { days_left: 12 }
        );
        assert_eq!(
            expiry(&cert(0, now - 3 * day), now, warn),
            Expiry::Expired { days_ago: 3 }
        );
        assert_eq!(expiry(&cert(now + 1, now + day), now, warn), Expiry::NotYet);
        // Hostile or broken figures do not overflow.
        assert!(matches!(
            expiry(&cert(i64::MIN, i64::MIN), i64::MAX, warn),
            Expiry::Expired { .. }
        ));
        let json = serde_json::to_value(cert(0, 1)).unwrap();
        assert_eq!(
            (json["role"].as_str(), json["app"].as_str()),
            (Some("app"), Some("shop"))
        );
        let back: CertInfo = serde_json::from_value(json).unwrap();
        assert_eq!(back, cert(0, 1));
    }
}
