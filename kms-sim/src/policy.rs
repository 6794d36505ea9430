//! Key policies: the JSON of a production KMS key policy, evaluated for one request.
//!
//! Supported (anything else is refused when the policy is loaded, so a policy never silently
//! means less than it says):
//! * `Version`, `Id`; statements with `Sid`, `Effect` (`Allow`/`Deny`), `Principal`, `Action`,
//!   `Resource` (required, as KMS requires it in a key policy, and `"*"`), `Condition`.
//! * `Principal`: `"*"` or `{"AWS": "*"}` (everyone), or `{"AWS": arn | [arns]}` where each is
//!   `"*"`, a principal's ARN (compared exactly), or an account,
//!   `arn:<partition>:iam::<account>:root` or the bare 12-digit account id (in `Allow`
//!   statements only; see below). Wildcards inside an ARN are refused (IAM refuses them too).
//! * `Action`: a string or a list, with IAM's wildcards anywhere in the name: `*` (any run of
//!   characters, none included) and `?` (any one character), compared case-insensitively, as
//!   IAM does (`kms:*`, `kms:*Encrypt*`, `kms:ReEncrypt*`, `kms:Decryp?`, `*`).
//! * Condition operators `StringEquals`, `StringNotEquals`, `StringEqualsIgnoreCase`,
//!   `StringNotEqualsIgnoreCase`, `ArnEquals`, `ArnLike`, `ArnNotEquals`, `ArnNotLike` (the ARN
//!   operators on `aws:PrincipalArn` only) and `Null`. A value list matches if any value
//!   matches; a negated operator holds when no value matches (as in IAM).
//! * Condition keys `kms:RecipientAttestation:ImageSha384` (PCR0, hex),
//!   `kms:RecipientAttestation:PCR0` .. `PCR31`, `kms:EncryptionContext:<key>`, and
//!   `aws:PrincipalArn` (the caller's ARN; for a role session AWS gives the role's ARN, which
//!   is what the sim's principals are).
//!
//! Evaluation as in IAM: an explicit `Deny` that matches wins; otherwise an `Allow` that
//! matches allows; otherwise the request is denied. A condition on a key the request does not
//! have (no `Recipient`, a missing context entry) does not hold, except `Null: true` and the
//! negated operators (`StringNotEquals…`, `ArnNot…`), which hold on an absent key.
//!
//! Principals: `"*"` matches every caller; a principal's ARN matches that caller. An account
//! principal (AWS's default key policy statement "Enable IAM User Permissions",
//! `{"AWS": "arn:aws:iam::<account>:root"}`) matches the account's root user and, as in AWS,
//! any other principal of that account **whose own IAM (identity) policies allow the action**
//! ([`RequestContext::identity_allows`]): it delegates the key to IAM. That is how a principal
//! the key policy never names can still use the key, and why the recommended policy's denials
//! name `"*"`. An account principal in a `Deny` is refused (not modelled).
//!
//! [`KeyPolicy::lockout_safety_check`] models KMS's key policy lockout safety check.

use std::collections::BTreeMap;

use serde_json::Value;

/// A parsed key policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPolicy {
    statements: Vec<Statement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Statement {
    sid: String,
    allow: bool,
    principals: Vec<Principal>,
    /// Lower-case action patterns.
    actions: Vec<String>,
    conditions: Vec<Condition>,
}

/// Who a statement names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Principal {
    /// `"*"`: every caller.
    Anyone,
    /// One principal, by ARN.
    Arn(String),
    /// An account (its root user, and its principals through their IAM policies).
    Account(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    StringEquals,
    StringNotEquals,
    StringEqualsIgnoreCase,
    StringNotEqualsIgnoreCase,
    /// `ArnEquals` and `ArnLike` (identical in IAM).
    ArnLike,
    /// `ArnNotEquals` and `ArnNotLike`.
    ArnNotLike,
    Null,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Condition {
    operator: Operator,
    key: String,
    values: Vec<String>,
}

/// A policy that is not understood, or that fails the lockout safety check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key policy: {0}")]
pub struct PolicyError(pub String);

/// What a request brings to the evaluation.
#[derive(Debug, Clone)]
pub struct RequestContext<'a> {
    /// `kms:Decrypt`, `kms:GenerateDataKey`, `kms:Encrypt`, ...
    pub action: &'a str,
    /// The caller's principal ARN (for a role session, the role's ARN).
    pub principal: &'a str,
    /// Whether the caller's own IAM (identity) policies allow `action` on this key. It counts
    /// only through an `Allow` that names the caller's account (AWS's default "Enable IAM User
    /// Permissions" statement), as in AWS.
    pub identity_allows: bool,
    /// The verified attestation document's PCRs, when the request had a valid `Recipient`.
    pub recipient_pcrs: Option<&'a BTreeMap<u8, Vec<u8>>>,
    /// The request's EncryptionContext.
    pub encryption_context: &'a BTreeMap<String, String>,
}

/// The outcome, with the statement that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by the statement with this `Sid`.
    Allow(String),
    /// Denied explicitly by the statement with this `Sid`.
    ExplicitDeny(String),
    /// No statement allows it.
    ImplicitDeny,
}

fn strings(v: &Value, what: &str) -> Result<Vec<String>, PolicyError> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(a) if !a.is_empty() => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| PolicyError(format!("{what}: not a string")))
            })
            .collect(),
        _ => Err(PolicyError(format!("{what}: expected a string or a non-empty list of strings"))),
    }
}

/// IAM's wildcard match: `*` is any run of characters (none included), `?` any one character,
/// everything else itself. Case-sensitive; callers lower-case both sides where IAM ignores case.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it currently absorbs up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            // Let the last `*` absorb one more character and retry after it.
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// IAM's ARN operators: each of the six `:`-separated parts compared on its own, with
/// wildcards, case-sensitively.
fn arn_match(pattern: &str, arn: &str) -> bool {
    let p: Vec<&str> = pattern.splitn(6, ':').collect();
    let a: Vec<&str> = arn.splitn(6, ':').collect();
    p.len() == 6 && a.len() == 6 && p.iter().zip(&a).all(|(p, a)| wildcard_match(p, a))
}

/// The account of a principal ARN (`arn:aws:iam::<account>:...`).
fn account_of(arn: &str) -> Option<&str> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", _, _, _, account, _] if is_account_id(account) => Some(account),
        _ => None,
    }
}

fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The account an account principal names (`arn:<partition>:iam::<account>:root` or the bare
/// id), if `p` is one.
fn account_principal(p: &str) -> Option<&str> {
    if is_account_id(p) {
        return Some(p);
    }
    let parts: Vec<&str> = p.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", _, "iam", "", account, "root"] if is_account_id(account) => Some(account),
        _ => None,
    }
}

fn parse_principals(
    v: Option<&Value>,
    sid: &str,
    allow: bool,
) -> Result<Vec<Principal>, PolicyError> {
    let bad = || PolicyError(format!("{sid}: Principal must be \"*\" or {{\"AWS\": ...}}"));
    let raw = match v {
        Some(Value::String(p)) if p == "*" => vec!["*".to_owned()],
        Some(Value::Object(p)) if p.len() == 1 && p.contains_key("AWS") => {
            strings(&p["AWS"], &format!("{sid}: Principal.AWS"))?
        }
        _ => return Err(bad()),
    };
    raw.iter()
        .map(|p| {
            if p == "*" {
                Ok(Principal::Anyone)
            } else if let Some(account) = account_principal(p) {
                if allow {
                    Ok(Principal::Account(account.to_owned()))
                } else {
                    Err(PolicyError(format!(
                        "{sid}: an account principal ({p}) in a Deny is not modelled by kms-sim; \
                         deny \"*\" with a condition instead"
                    )))
                }
            } else if p.contains(['*', '?']) {
                Err(PolicyError(format!("{sid}: wildcards in a principal ARN ({p}) are refused")))
            } else if account_of(p).is_some() {
                Ok(Principal::Arn(p.clone()))
            } else {
                Err(PolicyError(format!("{sid}: principal {p:?} is not an ARN kms-sim models")))
            }
        })
        .collect()
}

fn parse_action(a: &str, sid: &str) -> Result<String, PolicyError> {
    let ok = a == "*"
        || a.split_once(':').is_some_and(|(service, name)| {
            !service.is_empty()
                && !name.is_empty()
                && service.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'*' || b == b'?')
        });
    if ok {
        Ok(a.to_ascii_lowercase())
    } else {
        Err(PolicyError(format!("{sid}: action {a:?} is not service:Action (with * or ?)")))
    }
}

fn check_key(key: &str) -> Result<String, PolicyError> {
    let lower = key.to_ascii_lowercase();
    let ok = lower == "kms:recipientattestation:imagesha384"
        || lower == "aws:principalarn"
        || lower
            .strip_prefix("kms:recipientattestation:pcr")
            .and_then(|n| n.parse::<u8>().ok())
            .is_some_and(|n| n < 32)
        || (lower.starts_with("kms:encryptioncontext:") && key.len() > 22);
    if ok {
        // Context keys keep their case (KMS compares them case-sensitively).
        Ok(match lower.strip_prefix("kms:encryptioncontext:") {
            Some(_) => format!("kms:encryptioncontext:{}", &key[22..]),
            None => lower,
        })
    } else {
        Err(PolicyError(format!("condition key {key:?} is not modelled by kms-sim")))
    }
}

fn parse_conditions(c: &Value, sid: &str) -> Result<Vec<Condition>, PolicyError> {
    let c = c.as_object().ok_or_else(|| PolicyError(format!("{sid}: Condition")))?;
    let mut conditions = Vec::new();
    for (op, entries) in c {
        let operator = match op.as_str() {
            "StringEquals" => Operator::StringEquals,
            "StringNotEquals" => Operator::StringNotEquals,
            "StringEqualsIgnoreCase" => Operator::StringEqualsIgnoreCase,
            "StringNotEqualsIgnoreCase" => Operator::StringNotEqualsIgnoreCase,
            "ArnEquals" | "ArnLike" => Operator::ArnLike,
            "ArnNotEquals" | "ArnNotLike" => Operator::ArnNotLike,
            "Null" => Operator::Null,
            _ => {
                return Err(PolicyError(format!(
                    "{sid}: operator {op:?} is not modelled by kms-sim"
                )))
            }
        };
        let entries = entries.as_object().ok_or_else(|| PolicyError(format!("{sid}: {op}")))?;
        for (key, values) in entries {
            let values = strings(values, &format!("{sid}: {op}.{key}"))?;
            if operator == Operator::Null && values.iter().any(|v| v != "true" && v != "false") {
                return Err(PolicyError(format!("{sid}: Null takes \"true\" or \"false\"")));
            }
            let key = check_key(key)?;
            if matches!(operator, Operator::ArnLike | Operator::ArnNotLike)
                && key != "aws:principalarn"
            {
                return Err(PolicyError(format!(
                    "{sid}: {op} on {key} is not modelled by kms-sim (only on aws:PrincipalArn)"
                )));
            }
            conditions.push(Condition { operator, key, values });
        }
    }
    Ok(conditions)
}

impl KeyPolicy {
    /// Parses a key policy document.
    ///
    /// # Errors
    /// [`PolicyError`] for malformed JSON or anything outside the supported subset (see the
    /// module documentation), a statement without `Resource`, or one whose `Resource` is not
    /// `"*"`.
    pub fn from_json(text: &str) -> Result<Self, PolicyError> {
        let doc: Value =
            serde_json::from_str(text).map_err(|e| PolicyError(format!("not JSON: {e}")))?;
        let obj = doc.as_object().ok_or_else(|| PolicyError("not an object".into()))?;
        for k in obj.keys() {
            if !["Version", "Id", "Statement"].contains(&k.as_str()) {
                return Err(PolicyError(format!("unsupported field {k:?}")));
            }
        }
        let raw = match obj.get("Statement") {
            Some(Value::Array(a)) if !a.is_empty() => a.clone(),
            Some(s @ Value::Object(_)) => vec![s.clone()],
            _ => return Err(PolicyError("no Statement".into())),
        };
        let mut statements = Vec::new();
        for (i, s) in raw.iter().enumerate() {
            let s = s
                .as_object()
                .ok_or_else(|| PolicyError(format!("statement {i}: not an object")))?;
            for k in s.keys() {
                if !["Sid", "Effect", "Principal", "Action", "Resource", "Condition"]
                    .contains(&k.as_str())
                {
                    return Err(PolicyError(format!("statement {i}: unsupported field {k:?}")));
                }
            }
            let sid =
                s.get("Sid").and_then(Value::as_str).map_or_else(|| format!("#{i}"), str::to_owned);
            let allow = match s.get("Effect").and_then(Value::as_str) {
                Some("Allow") => true,
                Some("Deny") => false,
                _ => return Err(PolicyError(format!("{sid}: Effect must be Allow or Deny"))),
            };
            let principals = parse_principals(s.get("Principal"), &sid, allow)?;
            let actions = strings(
                s.get("Action").ok_or_else(|| PolicyError(format!("{sid}: no Action")))?,
                &format!("{sid}: Action"),
            )?
            .iter()
            .map(|a| parse_action(a, &sid))
            .collect::<Result<_, _>>()?;
            // KMS requires Resource in every key policy statement, and there it is "*" (the
            // key itself).
            let resource =
                s.get("Resource").ok_or_else(|| PolicyError(format!("{sid}: no Resource")))?;
            if strings(resource, &format!("{sid}: Resource"))? != ["*"] {
                return Err(PolicyError(format!("{sid}: a key policy's Resource is \"*\"")));
            }
            let conditions = match s.get("Condition") {
                Some(c) => parse_conditions(c, &sid)?,
                None => Vec::new(),
            };
            statements.push(Statement { sid, allow, principals, actions, conditions });
        }
        Ok(Self { statements })
    }

    /// Evaluates the policy for a request.
    #[must_use]
    pub fn evaluate(&self, req: &RequestContext<'_>) -> Decision {
        let action = req.action.to_ascii_lowercase();
        let applies = |s: &Statement| {
            s.principals.iter().any(|p| p.matches(req))
                && s.actions.iter().any(|a| wildcard_match(a, &action))
                && s.conditions.iter().all(|c| c.holds(req))
        };
        if let Some(s) = self.statements.iter().find(|s| !s.allow && applies(s)) {
            return Decision::ExplicitDeny(s.sid.clone());
        }
        match self.statements.iter().find(|s| s.allow && applies(s)) {
            Some(s) => Decision::Allow(s.sid.clone()),
            None => Decision::ImplicitDeny,
        }
    }

    /// KMS's key policy lockout safety check, run by `CreateKey` and `PutKeyPolicy` unless the
    /// caller sets `BypassPolicyLockoutSafetyCheck`: the new policy must allow `principal`, the
    /// caller, to make a subsequent `kms:PutKeyPolicy` request on the key. `identity_allows`:
    /// whether the caller's own IAM policies allow `kms:PutKeyPolicy` (which counts only through
    /// an `Allow` naming the caller's account, as everywhere).
    ///
    /// # Errors
    /// [`PolicyError`] when the policy would leave `principal` unable to change it: a key no
    /// administrator can manage any more.
    pub fn lockout_safety_check(
        &self,
        principal: &str,
        identity_allows: bool,
    ) -> Result<(), PolicyError> {
        let no_context = BTreeMap::new();
        let decision = self.evaluate(&RequestContext {
            action: "kms:PutKeyPolicy",
            principal,
            identity_allows,
            recipient_pcrs: None,
            encryption_context: &no_context,
        });
        match decision {
            Decision::Allow(_) => Ok(()),
            Decision::ExplicitDeny(_) | Decision::ImplicitDeny => Err(PolicyError(format!(
                "the policy does not allow {principal}, who sets it, to change it again \
                 (kms:PutKeyPolicy): the key would become unmanageable. Name the key \
                 administrators, or bypass the lockout safety check on purpose \
                 (BypassPolicyLockoutSafetyCheck)"
            ))),
        }
    }
}

impl Principal {
    fn matches(&self, req: &RequestContext<'_>) -> bool {
        match self {
            Self::Anyone => true,
            Self::Arn(arn) => arn == req.principal,
            Self::Account(account) => {
                account_of(req.principal) == Some(account.as_str())
                    && (account_principal(req.principal).is_some() || req.identity_allows)
            }
        }
    }
}

impl Condition {
    fn value(&self, req: &RequestContext<'_>) -> Option<String> {
        if self.key == "aws:principalarn" {
            return Some(req.principal.to_owned());
        }
        if let Some(k) = self.key.strip_prefix("kms:encryptioncontext:") {
            return req.encryption_context.get(k).cloned();
        }
        let pcrs = req.recipient_pcrs?;
        let index = if self.key == "kms:recipientattestation:imagesha384" {
            0
        } else {
            self.key.strip_prefix("kms:recipientattestation:pcr")?.parse::<u8>().ok()?
        };
        pcrs.get(&index).map(hex::encode)
    }

    fn holds(&self, req: &RequestContext<'_>) -> bool {
        let value = self.value(req);
        let any = |f: &dyn Fn(&str, &str) -> bool| {
            value.as_deref().is_some_and(|v| self.values.iter().any(|w| f(w, v)))
        };
        let eq = |w: &str, v: &str| w == v;
        let eq_ic = |w: &str, v: &str| w.eq_ignore_ascii_case(v);
        match self.operator {
            Operator::Null => {
                let want_absent = self.values.iter().any(|v| v == "true");
                let want_present = self.values.iter().any(|v| v == "false");
                (want_absent && value.is_none()) || (want_present && value.is_some())
            }
            Operator::StringEquals => any(&eq),
            Operator::StringEqualsIgnoreCase => any(&eq_ic),
            Operator::ArnLike => any(&arn_match),
            // IAM: a negated operator holds when no value matches, an absent key included.
            Operator::StringNotEquals => !any(&eq),
            Operator::StringNotEqualsIgnoreCase => !any(&eq_ic),
            Operator::ArnNotLike => !any(&arn_match),
        }
    }
}

/// What the recommended policy lets the key administrators do: manage the key, never use it.
pub const KEY_ADMINISTRATION_ACTIONS: &[&str] = &[
    "kms:DescribeKey",
    "kms:GetKeyPolicy",
    "kms:PutKeyPolicy",
    "kms:ListKeyPolicies",
    "kms:ListGrants",
    "kms:RevokeGrant",
    "kms:ListResourceTags",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:GetKeyRotationStatus",
    "kms:EnableKeyRotation",
    "kms:DisableKeyRotation",
    "kms:EnableKey",
    "kms:DisableKey",
    "kms:UpdateKeyDescription",
    "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion",
];

/// The key policy this project recommends for the sealing key, as JSON.
///
/// * `KeyAdministration`: `key_admins` (ARNs) may manage the key ([`KEY_ADMINISTRATION_ACTIONS`]),
///   never use it.
/// * `EnclaveOnlyWithAttestation`: `principal` (the parent instance's role) may `kms:Decrypt`
///   and `kms:GenerateDataKey` only with a `Recipient` whose PCRs equal `pcrs` (index, value;
///   `StringEqualsIgnoreCase`, as AWS documents for Nitro Enclaves) and only under the
///   wallet's EncryptionContext purpose.
/// * Denials to **everyone** (`"Principal": "*"`), so that no other statement, AWS's default
///   "Enable IAM User Permissions" (account root) statement and the IAM policies it delegates
///   to included, can reopen what they close:
///   * `NoPlaintextToAnyone`: `kms:Decrypt` and `kms:GenerateDataKey*` without an attestation
///     (`Null` on `kms:RecipientAttestation:ImageSha384`): no `Plaintext` for anyone.
///   * `NoKeyToAnotherImage` (PCR0) and `NoKeyToAnotherImagePCR<n>` (each other pinned PCR):
///     the same actions when the attested value differs (`StringNotEqualsIgnoreCase`; one
///     statement per PCR, because the keys of one condition block must all match for it to
///     apply). Otherwise a principal allowed through IAM could attest its own enclave image
///     (or a debug-mode one) and have the key sealed to that.
///   * `NobodyPlantsMovesOrDelegates`: `kms:Encrypt` (a key someone knows, encrypted under the
///     wallet's context, would be stored as the wrapped key), `kms:ReEncrypt*` (moves a blob
///     into this key, or out of it to a key someone can `Decrypt` plainly), `kms:CreateGrant`
///     (grants bypass the key policy), `kms:ImportKeyMaterial` and `kms:ReplicateKey` (known
///     material, or a replica under another policy, should the key be created `EXTERNAL` or
///     multi-Region by mistake).
///   * `OnlyKeyAdministratorsChangeThePolicy`: `kms:PutKeyPolicy` unless `aws:PrincipalArn` is
///     one of `key_admins` (`ArnNotEquals`).
///
/// The key administrators can still rewrite the policy: they are trusted with the key, so keep
/// them few, distinct from `principal`, and watch `PutKeyPolicy` in CloudTrail.
///
/// # Panics
/// When `key_admins` is empty (nobody could manage the key: the lockout safety check refuses
/// it) or `pcrs` has no PCR0 (the policy would pin no image).
#[must_use]
pub fn recommended_policy_json(
    principal: &str,
    key_admins: &[&str],
    pcrs: &[(u8, &[u8])],
) -> String {
    assert!(!key_admins.is_empty(), "the recommended policy names its key administrators");
    assert!(pcrs.iter().any(|(i, _)| *i == 0), "the recommended policy pins PCR0");
    const PLAINTEXT_ACTIONS: [&str; 2] = ["kms:Decrypt", "kms:GenerateDataKey*"];
    let mut allow_conditions = serde_json::Map::new();
    let mut statements = vec![
        serde_json::json!({
            "Sid": "KeyAdministration",
            "Effect": "Allow",
            "Principal": {"AWS": key_admins},
            "Action": KEY_ADMINISTRATION_ACTIONS,
            "Resource": "*"
        }),
        Value::Null, // EnclaveOnlyWithAttestation, once its conditions are known
        serde_json::json!({
            "Sid": "NoPlaintextToAnyone",
            "Effect": "Deny",
            "Principal": "*",
            "Action": PLAINTEXT_ACTIONS,
            "Resource": "*",
            "Condition": {"Null": {"kms:RecipientAttestation:ImageSha384": "true"}}
        }),
    ];
    for (index, value) in pcrs {
        let (key, sid) = if *index == 0 {
            ("kms:RecipientAttestation:ImageSha384".to_owned(), "NoKeyToAnotherImage".to_owned())
        } else {
            (
                format!("kms:RecipientAttestation:PCR{index}"),
                format!("NoKeyToAnotherImagePCR{index}"),
            )
        };
        let value = hex::encode(value);
        allow_conditions.insert(key.clone(), value.clone().into());
        if *index == 0 {
            allow_conditions.insert("kms:RecipientAttestation:PCR0".into(), value.clone().into());
        }
        statements.push(serde_json::json!({
            "Sid": sid,
            "Effect": "Deny",
            "Principal": "*",
            "Action": PLAINTEXT_ACTIONS,
            "Resource": "*",
            "Condition": {"StringNotEqualsIgnoreCase": {key: value}}
        }));
    }
    statements[1] = serde_json::json!({
        "Sid": "EnclaveOnlyWithAttestation",
        "Effect": "Allow",
        "Principal": {"AWS": principal},
        "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
        "Resource": "*",
        "Condition": {
            "StringEqualsIgnoreCase": allow_conditions,
            "StringEquals": {"kms:EncryptionContext:x402-wallet:purpose": "state-sealing-key/v1"}
        }
    });
    statements.push(serde_json::json!({
        "Sid": "NobodyPlantsMovesOrDelegates",
        "Effect": "Deny",
        "Principal": "*",
        "Action": [
            "kms:Encrypt",
            "kms:ReEncrypt*",
            "kms:CreateGrant",
            "kms:ImportKeyMaterial",
            "kms:ReplicateKey"
        ],
        "Resource": "*"
    }));
    statements.push(serde_json::json!({
        "Sid": "OnlyKeyAdministratorsChangeThePolicy",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "kms:PutKeyPolicy",
        "Resource": "*",
        "Condition": {"ArnNotEquals": {"aws:PrincipalArn": key_admins}}
    }));
    serde_json::json!({
        "Version": "2012-10-17",
        "Id": "x402-wallet-state-sealing-key",
        "Statement": statements
    })
    .to_string()
}

/// `policy_json` with AWS's default key policy statement "Enable IAM User Permissions" added:
/// the account's root, hence (through IAM) any principal of `account` whose IAM policies allow
/// it, may do anything with the key (`kms:*`). What a key created with the console's defaults
/// keeps; the recommended policy must hold even then.
///
/// # Panics
/// When `policy_json` is not a policy object with a `Statement` list.
#[must_use]
pub fn with_account_root_statement(policy_json: &str, account: &str) -> String {
    let mut doc: Value = serde_json::from_str(policy_json).expect("a policy document");
    doc["Statement"].as_array_mut().expect("a Statement list").insert(
        0,
        serde_json::json!({
            "Sid": "Enable IAM User Permissions",
            "Effect": "Allow",
            "Principal": {"AWS": format!("arn:aws:iam::{account}:root")},
            "Action": "kms:*",
            "Resource": "*"
        }),
    );
    doc.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "arn:aws:iam::111122223333:role/parent";
    const ADMIN: &str = "arn:aws:iam::111122223333:role/key-admin";
    const ROOT: &str = "arn:aws:iam::111122223333:root";
    const OTHER: &str = "arn:aws:iam::111122223333:role/other";

    fn policy(pcr0: &str) -> KeyPolicy {
        KeyPolicy::from_json(&format!(
            r#"{{"Version": "2012-10-17", "Statement": [
              {{"Sid": "admin", "Effect": "Allow", "Principal": {{"AWS": "arn:aws:iam::111122223333:root"}}, "Action": "kms:*", "Resource": "*"}},
              {{"Sid": "enclave", "Effect": "Allow", "Principal": {{"AWS": "{ME}"}},
                "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*",
                "Condition": {{"StringEqualsIgnoreCase": {{"kms:RecipientAttestation:ImageSha384": "{pcr0}", "kms:RecipientAttestation:PCR2": "{pcr0}"}},
                               "StringEquals": {{"kms:EncryptionContext:x402-wallet:purpose": "state-sealing-key/v1"}}}}}},
              {{"Sid": "no-plaintext", "Effect": "Deny", "Principal": "*", "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
                "Resource": "*", "Condition": {{"Null": {{"kms:RecipientAttestation:ImageSha384": "true"}}}}}}
            ]}}"#
        ))
        .unwrap()
    }

    fn request<'a>(
        action: &'a str,
        principal: &'a str,
        pcrs: Option<&'a BTreeMap<u8, Vec<u8>>>,
        ctx: &'a BTreeMap<String, String>,
    ) -> RequestContext<'a> {
        RequestContext {
            action,
            principal,
            identity_allows: false,
            recipient_pcrs: pcrs,
            encryption_context: ctx,
        }
    }

    fn sealing_context() -> BTreeMap<String, String> {
        BTreeMap::from([("x402-wallet:purpose".to_owned(), "state-sealing-key/v1".to_owned())])
    }

    #[test]
    fn policy_allows_only_the_attested_image() {
        let pcr = vec![0xabu8; 48];
        let p = policy(&hex::encode(&pcr).to_uppercase());
        let pcrs = BTreeMap::from([(0u8, pcr.clone()), (2, pcr.clone())]);
        let ctx = sealing_context();
        let req = |action, pcrs, ctx| request(action, ME, pcrs, ctx);
        assert_eq!(
            p.evaluate(&req("kms:Decrypt", Some(&pcrs), &ctx)),
            Decision::Allow("enclave".into())
        );
        // No Recipient: the guard denies explicitly.
        assert_eq!(
            p.evaluate(&req("kms:Decrypt", None, &ctx)),
            Decision::ExplicitDeny("no-plaintext".into())
        );
        assert_eq!(
            p.evaluate(&req("kms:GenerateDataKeyWithoutPlaintext", None, &ctx)),
            Decision::ExplicitDeny("no-plaintext".into())
        );
        // Another PCR2, another context, another action, another principal.
        let other = BTreeMap::from([(0u8, pcr.clone()), (2, vec![0u8; 48])]);
        assert_eq!(p.evaluate(&req("kms:Decrypt", Some(&other), &ctx)), Decision::ImplicitDeny);
        let empty = BTreeMap::new();
        assert_eq!(p.evaluate(&req("kms:Decrypt", Some(&pcrs), &empty)), Decision::ImplicitDeny);
        assert_eq!(p.evaluate(&req("kms:Encrypt", Some(&pcrs), &ctx)), Decision::ImplicitDeny);
        let stranger = RequestContext { principal: OTHER, ..req("kms:Decrypt", Some(&pcrs), &ctx) };
        assert_eq!(p.evaluate(&stranger), Decision::ImplicitDeny);
        // The account root statement delegates to IAM: the same stranger, with an IAM policy
        // allowing it, is allowed; and the root user itself always is.
        let delegated = RequestContext { identity_allows: true, ..stranger.clone() };
        assert_eq!(p.evaluate(&delegated), Decision::Allow("admin".into()));
        let root = RequestContext { principal: ROOT, ..stranger.clone() };
        assert_eq!(p.evaluate(&root), Decision::Allow("admin".into()));
        // ... but not a principal of another account.
        let foreign = RequestContext {
            principal: "arn:aws:iam::999999999999:role/x",
            identity_allows: true,
            ..stranger
        };
        assert_eq!(p.evaluate(&foreign), Decision::ImplicitDeny);
    }

    #[test]
    fn policy_refuses_what_it_does_not_model() {
        for bad in [
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "NotAction": "kms:Encrypt", "Resource": "*"}]}"#,
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*", "Condition": {"StringLike": {"kms:RecipientAttestation:PCR0": "*"}}}]}"#,
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*", "Condition": {"StringEquals": {"kms:CallerAccount": "1"}}}]}"#,
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*", "Condition": {"StringEquals": {"kms:RecipientAttestation:PCR32": "1"}}}]}"#,
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*", "Condition": {"ArnEquals": {"kms:RecipientAttestation:PCR0": "1"}}}]}"#,
            r#"{"Statement": [{"Effect": "Maybe", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*"}]}"#,
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "arn:x"}]}"#,
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "Decrypt", "Resource": "*"}]}"#,
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": [], "Resource": "*"}]}"#,
            r#"{"Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "kms:Decrypt", "Resource": "*"}]}"#,
            r#"{"Statement": [{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:role/*"}, "Action": "kms:Decrypt", "Resource": "*"}]}"#,
            r#"{"Statement": [{"Effect": "Deny", "Principal": {"AWS": "111122223333"}, "Action": "kms:Decrypt", "Resource": "*"}]}"#,
            r#"{"Statement": []}"#,
            r#"[]"#,
        ] {
            assert!(KeyPolicy::from_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn policy_refuses_a_statement_without_resource() {
        // KMS requires Resource in every key policy statement.
        let without = r#"{"Statement": [{"Sid": "s", "Effect": "Deny", "Principal": "*", "Action": "kms:Encrypt"}]}"#;
        let err = KeyPolicy::from_json(without).unwrap_err();
        assert!(err.0.contains("no Resource"), "{err}");
        let with = r#"{"Statement": [{"Sid": "s", "Effect": "Deny", "Principal": "*", "Action": "kms:Encrypt", "Resource": "*"}]}"#;
        assert!(KeyPolicy::from_json(with).is_ok());
    }

    #[test]
    fn wildcards_match_as_in_iam() {
        for (pattern, text, expected) in [
            ("*", "", true),
            ("*", "kms:encrypt", true),
            ("kms:*", "kms:encrypt", true),
            ("kms:*encrypt*", "kms:encrypt", true),
            ("kms:*encrypt*", "kms:reencryptfrom", true),
            ("kms:*encrypt*", "kms:decrypt", false),
            ("kms:*crypt", "kms:decrypt", true),
            ("kms:decryp?", "kms:decrypt", true),
            ("kms:decryp?", "kms:decryp", false),
            ("kms:re?ncrypt*", "kms:reencryptto", true),
            ("kms:?", "kms:", false),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("**", "x", true),
            ("kms:encrypt", "kms:encrypt2", false),
        ] {
            assert_eq!(wildcard_match(pattern, text), expected, "{pattern} vs {text}");
        }
        assert!(arn_match("arn:aws:iam::*:role/admin-?", "arn:aws:iam::111122223333:role/admin-1"));
        assert!(!arn_match("arn:aws:iam::*:role/admin", "arn:aws:iam::111122223333:role/Admin"));
        assert!(!arn_match("arn:aws:iam::1:role/a", "not an arn"));
    }

    #[test]
    fn deny_with_inner_and_single_character_wildcards_applies() {
        // Before: only a trailing `*` worked, so these Denys were compared literally and
        // never applied; the Allow below then let the caller Encrypt.
        let ctx = BTreeMap::new();
        for pattern in ["kms:*Encrypt*", "kms:Encryp?", "KMS:ENCRYPT", "*", "kms:E*t"] {
            let p = KeyPolicy::from_json(&format!(
                r#"{{"Statement": [
                  {{"Sid": "all", "Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"}},
                  {{"Sid": "deny", "Effect": "Deny", "Principal": "*", "Action": "{pattern}", "Resource": "*"}}
                ]}}"#
            ))
            .unwrap();
            assert_eq!(
                p.evaluate(&request("kms:Encrypt", ME, None, &ctx)),
                Decision::ExplicitDeny("deny".into()),
                "{pattern}"
            );
        }
        let p = KeyPolicy::from_json(
            r#"{"Statement": [
              {"Sid": "all", "Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"},
              {"Sid": "deny", "Effect": "Deny", "Principal": "*", "Action": "kms:*Encrypt*", "Resource": "*"}
            ]}"#,
        )
        .unwrap();
        assert_eq!(
            p.evaluate(&request("kms:ReEncryptFrom", ME, None, &ctx)),
            Decision::ExplicitDeny("deny".into())
        );
        assert_eq!(
            p.evaluate(&request("kms:Decrypt", ME, None, &ctx)),
            Decision::Allow("all".into())
        );
    }

    #[test]
    fn lockout_safety_check_refuses_a_policy_nobody_can_change() {
        let pcr0 = [0xaau8; 48];
        // Only the enclave's statement: nobody may PutKeyPolicy.
        let enclave_only = KeyPolicy::from_json(&format!(
            r#"{{"Statement": [{{"Sid": "enclave", "Effect": "Allow", "Principal": {{"AWS": "{ME}"}},
                "Action": "kms:Decrypt", "Resource": "*",
                "Condition": {{"StringEqualsIgnoreCase": {{"kms:RecipientAttestation:ImageSha384": "{}"}}}}}}]}}"#,
            hex::encode(pcr0)
        ))
        .unwrap();
        let err = enclave_only.lockout_safety_check(ADMIN, true).unwrap_err();
        assert!(err.0.contains("BypassPolicyLockoutSafetyCheck"), "{err}");
        // The recommended policy lets its administrators, and only them, change it.
        let recommended =
            KeyPolicy::from_json(&recommended_policy_json(ME, &[ADMIN], &[(0, &pcr0)])).unwrap();
        assert!(recommended.lockout_safety_check(ADMIN, false).is_ok());
        assert!(recommended.lockout_safety_check(ME, true).is_err());
        // AWS's default statement: the root user, or a principal whose IAM policies allow it.
        let default = KeyPolicy::from_json(&format!(
            r#"{{"Statement": [{{"Effect": "Allow", "Principal": {{"AWS": "{ROOT}"}}, "Action": "kms:*", "Resource": "*"}}]}}"#
        ))
        .unwrap();
        assert!(default.lockout_safety_check(ROOT, false).is_ok());
        assert!(default.lockout_safety_check(ADMIN, true).is_ok());
        assert!(default.lockout_safety_check(ADMIN, false).is_err());
    }

    #[test]
    fn the_recommended_policy_denies_planting_to_everyone_in_the_account() {
        // The key keeps AWS's default "Enable IAM User Permissions" statement, and another
        // principal of the account has an IAM policy allowing kms:* (identity_allows).
        let pcrs = BTreeMap::from([(0u8, vec![0xa0; 48]), (2, vec![0xa2; 48])]);
        let pinned = [(0u8, pcrs[&0].as_slice()), (2, pcrs[&2].as_slice())];
        let json = with_account_root_statement(
            &recommended_policy_json(ME, &[ADMIN], &pinned),
            "111122223333",
        );
        let p = KeyPolicy::from_json(&json).unwrap();
        let ctx = sealing_context();
        fn as_<'a>(
            principal: &'a str,
            action: &'a str,
            pcrs: Option<&'a BTreeMap<u8, Vec<u8>>>,
            ctx: &'a BTreeMap<String, String>,
        ) -> RequestContext<'a> {
            RequestContext { identity_allows: true, ..request(action, principal, pcrs, ctx) }
        }
        for who in [ROOT, OTHER, ME, ADMIN] {
            for action in ["kms:Encrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:CreateGrant"]
            {
                assert_eq!(
                    p.evaluate(&as_(who, action, None, &ctx)),
                    Decision::ExplicitDeny("NobodyPlantsMovesOrDelegates".into()),
                    "{who} {action}"
                );
            }
            // No plaintext without an attestation.
            assert_eq!(
                p.evaluate(&as_(who, "kms:Decrypt", None, &ctx)),
                Decision::ExplicitDeny("NoPlaintextToAnyone".into()),
                "{who}"
            );
            // An attestation of another image (or a debug-mode enclave's zero PCRs), or the
            // right PCR0 with another PCR2: denied although IAM allows it.
            for attested in [
                BTreeMap::from([(0u8, vec![0xb0; 48]), (2, vec![0xa2; 48])]),
                BTreeMap::from([(0u8, vec![0; 48]), (2, vec![0; 48])]),
                BTreeMap::from([(0u8, vec![0xa0; 48]), (2, vec![0xb2; 48])]),
                BTreeMap::from([(0u8, vec![0xa0; 48])]),
            ] {
                let d = p.evaluate(&as_(who, "kms:Decrypt", Some(&attested), &ctx));
                assert!(
                    matches!(&d, Decision::ExplicitDeny(s) if s.starts_with("NoKeyToAnotherImage")),
                    "{who} {attested:?}: {d:?}"
                );
            }
        }
        // The policy is changed only by the administrators.
        for who in [ROOT, OTHER, ME] {
            assert_eq!(
                p.evaluate(&as_(who, "kms:PutKeyPolicy", None, &ctx)),
                Decision::ExplicitDeny("OnlyKeyAdministratorsChangeThePolicy".into()),
                "{who}"
            );
        }
        assert_eq!(
            p.evaluate(&request("kms:PutKeyPolicy", ADMIN, None, &ctx)),
            Decision::Allow("KeyAdministration".into())
        );
        // The enclave itself still gets its key; its administrators do not.
        assert_eq!(
            p.evaluate(&request("kms:Decrypt", ME, Some(&pcrs), &ctx)),
            Decision::Allow("EnclaveOnlyWithAttestation".into())
        );
        assert_eq!(
            p.evaluate(&request("kms:Decrypt", ADMIN, Some(&pcrs), &ctx)),
            Decision::ImplicitDeny
        );
    }

    #[test]
    fn a_deny_naming_only_the_parent_role_leaves_the_account_able_to_plant() {
        // The gap the recommended policy closes, modelled: the same policy with its Encrypt
        // denial narrowed to the parent role lets any principal of the account that IAM allows
        // encrypt a key of its choosing under the wallet's context.
        let pcr0 = [0xa0u8; 48];
        let mut doc: Value = serde_json::from_str(&with_account_root_statement(
            &recommended_policy_json(ME, &[ADMIN], &[(0, &pcr0)]),
            "111122223333",
        ))
        .unwrap();
        for s in doc["Statement"].as_array_mut().unwrap() {
            if s["Sid"] == "NobodyPlantsMovesOrDelegates" {
                s["Principal"] = serde_json::json!({"AWS": ME});
            }
        }
        let p = KeyPolicy::from_json(&doc.to_string()).unwrap();
        let ctx = sealing_context();
        let other =
            RequestContext { identity_allows: true, ..request("kms:Encrypt", OTHER, None, &ctx) };
        assert_eq!(p.evaluate(&other), Decision::Allow("Enable IAM User Permissions".into()));
        let root = request("kms:Encrypt", ROOT, None, &ctx);
        assert_eq!(p.evaluate(&root), Decision::Allow("Enable IAM User Permissions".into()));
    }
}
