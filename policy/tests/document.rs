//! The policy document: what it compiles to, and bad documents rejected with line and reason.

use wallet_policy::{
    amount::parse_human,
    document::{Action, AssetMatch, Policy},
    U256,
};

fn units(s: &str) -> U256 {
    parse_human(s).unwrap().units
}

const FULL: &str = r#"# An owner's policy
version = 1

[wallet]
max_per_payment = "1.00"
max_validity = "5m"
payments_per_minute = 60
budgets = [{ per = "1h", max = "20" }, { per = "1d", max = 100 }]
per_payee = [{ per = "1d", max = "10" }]

[session]
cap = "10"
payments_per_minute = 20
budgets = [{ per = "1h", max = "5" }]

[approval]
above = "0.50"
first_time_payee = true
expires = "15m"

[payees]
deny = ["0x000000000000000000000000000000000000dEaD"]

[[rule]]
name = "USDC on Base"
networks = ["eip155:8453"]
assets = ["USDC", "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"]
action = "allow"

[[rule]]
action = "deny"
"#;

#[test]
fn a_full_document_compiles() {
    let p = Policy::parse(FULL).unwrap();
    assert_eq!(p.wallet.max_per_payment, Some(units("1")));
    assert_eq!(p.wallet.max_validity_seconds, 300);
    assert_eq!(p.wallet.payments_per_minute, Some(60));
    assert_eq!(p.wallet.budgets.len(), 2);
    assert_eq!(p.wallet.budgets[1].per_seconds, 86_400);
    assert_eq!(p.wallet.budgets[1].max, units("100"), "integers are whole tokens");
    assert_eq!(p.wallet.per_payee[0].max, units("10"));
    assert_eq!(p.session.cap, Some(units("10")));
    assert_eq!(p.session.budgets[0].per_seconds, 3600);
    assert_eq!(p.approval.above, Some(units("0.5")));
    assert!(p.approval.first_time_payee);
    assert_eq!(p.approval.expires_seconds, 900);
    assert_eq!(p.deny_payees.len(), 1);
    assert_eq!(p.rules.len(), 2);
    assert_eq!(p.rules[0].name, "USDC on Base");
    assert_eq!(p.rules[0].line, 24, "the line of its [[rule]] header");
    assert_eq!(p.rules[0].assets[0], AssetMatch::Symbol("USDC".into()));
    assert_eq!(p.rules[1].name, "rule 2");
    assert_eq!(p.rules[1].action, Action::Deny);
    assert_eq!(p.source, FULL, "the document is kept as written, comments included");
}

#[test]
fn the_basic_document_round_trips() {
    let doc = Policy::basic_document(
        units("0.25"),
        &["eip155:84532".into()],
        &["0x036CbD53842c5426634e7929541eC2318f3dCF7e".parse().unwrap()],
        120,
    );
    let p = Policy::parse(&doc).unwrap();
    assert_eq!(p.wallet.max_per_payment, Some(units("0.25")));
    assert_eq!(p.wallet.max_validity_seconds, 120);
    assert_eq!(p.rules.len(), 1);
    assert_eq!(p.rules[0].networks, vec!["eip155:84532".to_owned()]);
}

/// `(document, line, words the message must contain)`
const BAD: &[(&str, usize, &str)] = &[
    ("version = 2\n", 1, "unsupported document version 2"),
    ("[wallet]\nmax_per_payment = \"1\"\n", 1, "missing field `version`"),
    ("version = 1\n[wallet]\nmax_per_payment = 0.25\n", 3, "is a float"),
    ("version = 1\n[wallet]\nmax_per_payment = \"$0.25\"\n", 3, "plain decimal"),
    ("version = 1\n[wallet]\nmax_per_payment = \"-1\"\n", 3, "amount \"-1\""),
    ("version = 1\n[wallet]\nmax_per_paymnet = \"1\"\n", 3, "unknown field `max_per_paymnet`"),
    ("version = 1\n[wallet]\nmax_validity = \"2h\"\n", 3, "between 10 s and 3600 s"),
    ("version = 1\n[wallet]\nmax_validity = \"soon\"\n", 3, "not a duration"),
    ("version = 1\n\n[wallet]\npayments_per_minute = 0\n", 4, "at least 1"),
    ("version = 1\n[wallet]\nbudgets = [{ per = \"40d\", max = \"1\" }]\n", 3, "at most 31 days"),
    ("version = 1\n[wallet]\nbudgets = [{ per = \"1h\", max = \"1\" }, { per = \"60m\", max = \"2\" }]\n", 3, "same window"),
    ("version = 1\n[session]\nbudgets = [{ per = \"1h\" }]\n", 3, "missing field `max`"),
    ("version = 1\n[approval]\nexpires = \"2d\"\n", 3, "at most 24 hours"),
    ("version = 1\n[payees]\nallow = [\"0x12\"]\n", 3, "payee \"0x12\""),
    ("version = 1\n\n\n[[rule]]\nnetworks = [\"solana:mainnet\"]\naction = \"allow\"\n", 5, "solana"),
    ("version = 1\n[[rule]]\naction = \"maybe\"\n", 3, "unknown variant `maybe`"),
    ("version = 1\n[[rule]]\nname = \"x\"\n", 2, "missing field `action`"),
    ("version = 1\n\n[[rule]]\naction = \"deny\"\nmax_per_payment = \"1\"\n", 3, "deny rule cannot"),
    ("version = 1\n[[rule]]\nassets = [\"US DC\"]\naction = \"allow\"\n", 3, "registry symbol"),
    ("version = 1\n[wallet\n", 2, ""),
];

#[test]
fn bad_documents_are_rejected_with_line_and_reason() {
    for (doc, line, words) in BAD {
        let e = Policy::parse(doc).expect_err(doc);
        assert_eq!(e.line, *line, "{doc:?}: {e}");
        assert!(e.to_string().contains(words), "{doc:?}: {e}");
        if *line > 0 {
            assert!(e.to_string().starts_with(&format!("line {line}")), "{e}");
        }
    }
}

#[test]
fn an_oversized_document_is_rejected() {
    let doc = format!("version = 1\n#{}\n", "x".repeat(300 * 1024));
    assert!(Policy::parse(&doc).unwrap_err().to_string().contains("larger than"));
}

/// The commented example in README.md is a valid document, and means what its comments say.
#[test]
fn the_readme_example_parses() {
    let readme = include_str!("../../README.md");
    let start = readme.find("```toml\n").expect("a toml block in README.md") + 8;
    let end = start + readme[start..].find("```").unwrap();
    let p = Policy::parse(&readme[start..end]).unwrap_or_else(|e| panic!("README example: {e}"));
    assert_eq!(p.wallet.max_per_payment, Some(units("0.5")));
    assert_eq!(p.wallet.budgets.len(), 2);
    assert_eq!(p.session.cap, Some(units("20")));
    assert_eq!(p.approval.above, Some(units("0.25")));
    assert!(p.approval.first_time_payee);
    assert_eq!(p.rules.len(), 3);
    assert_eq!(p.rules[1].action, Action::Approve);
    assert_eq!(p.rules[2].max_per_payment, Some(units("0.3")));
}
