use super::*;

fn basic_header(principal: &str, secret: &str) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{principal}:{secret}"));
    format!("Basic {encoded}").into_bytes()
}

fn frameworks_only() -> Authentication {
    let credentials = Credentials::parse(
        r#"{"credentials": [{"principal": "alice", "secret": "s3cret"},
                            {"principal": "bob", "secret": "other:with:colons"}]}"#,
    )
    .ok()
    .unwrap();
    let realms = Realms {
        frameworks: true,
        ..Default::default()
    };
    Authentication::new(Some(credentials), realms).unwrap()
}

#[test]
fn a_known_principal_with_its_secret_is_who_it_says() {
    let auth = frameworks_only();
    let alice = basic_header("alice", "s3cret");
    assert_eq!(
        auth.principal(Realm::Scheduler, Some(&alice)).unwrap(),
        Some("alice".to_owned())
    );
    // The secret may hold colons: the principal ends at the first.
    let bob = basic_header("bob", "other:with:colons");
    assert_eq!(
        auth.principal(Realm::Scheduler, Some(&bob)).unwrap(),
        Some("bob".to_owned())
    );
    // The scheme is case-insensitive, as RFC 7617 says.
    let lower = String::from_utf8(alice)
        .unwrap()
        .replacen("Basic", "basic", 1);
    assert!(
        auth.principal(Realm::Scheduler, Some(lower.as_bytes()))
            .is_ok()
    );
}

#[test]
fn missing_wrong_or_malformed_credentials_are_refused_with_the_realm() {
    let auth = frameworks_only();
    let refused = |header: Option<&[u8]>| auth.principal(Realm::Scheduler, header).unwrap_err();
    assert_eq!(refused(None).realm, Realm::Scheduler);
    assert!(refused(None).why.contains("needs credentials"));
    for wrong in [
        basic_header("alice", "wrong"),
        basic_header("alice", "s3cre"),
        basic_header("alice", "s3cret "),
        basic_header("mallory", "s3cret"),
        basic_header("", ""),
    ] {
        assert!(refused(Some(&wrong)).why.contains("wrong"), "{wrong:?}");
    }
    // Without a token book (the agent), a bearer token is no credential at all.
    assert!(refused(Some(b"Bearer abc")).why.contains("not taken here"));
    for malformed in [
        &b"Basic !!!not-base64"[..],
        b"Basic",
        b"Basic YWxpY2U=", // "alice": no colon
        b"\xff\xfe",
    ] {
        assert!(refused(Some(malformed)).why.contains("not HTTP Basic"));
    }
}

#[test]
fn a_realm_whose_flag_is_off_asks_no_one() {
    let auth = frameworks_only();
    let wrong = basic_header("alice", "wrong");
    assert_eq!(
        auth.principal(Realm::ReadWrite, Some(&wrong)).unwrap(),
        None
    );
    assert_eq!(auth.principal(Realm::ReadOnly, None).unwrap(), None);
    assert_eq!(Realm::ReadWrite.name(), "mesos-master-readwrite");
}

#[test]
fn a_flag_without_credentials_is_refused_at_start() {
    let readwrite = Realms {
        readwrite: true,
        ..Default::default()
    };
    let e = Authentication::new(None, readwrite).unwrap_err();
    assert!(
        e.to_string().contains("--authenticate-http-readwrite"),
        "{e}"
    );
    assert!(Authentication::new(None, Realms::default()).is_ok());
}

#[test]
fn both_of_mesos_credentials_forms_are_read_and_bad_ones_refused() {
    let text = Credentials::parse("alice s3cret\n\n  bob  pw \n")
        .ok()
        .unwrap();
    assert!(text.check("alice", b"s3cret") && text.check("bob", b"pw"));
    assert!(!text.check("alice", b"pw"));
    for bad in [
        "alice",
        "alice s3cret extra",
        r#"{"credentials": [{"principal": "a:b", "secret": "x"}]}"#,
        r#"{"credentials": [{"principal": "a", "secret": "x"}, {"principal": "a", "secret": "y"}]}"#,
        r#"{"credentials": [{"principal": "a", "secret": "x", "role": "r"}]}"#,
        r#"{"credentials": "#,
        r#"{"credentials": [{"principal": "a"}]}"#,
        r#"{"credentials": [{"principal": "a", "secret": ""}]}"#,
    ] {
        assert!(Credentials::parse(bad).is_err(), "{bad}");
    }
    // Its Debug never shows a secret.
    assert!(!format!("{text:?}").contains("s3cret"));
}

/// One token per principal named, all valid for an hour.
struct Book(Vec<(String, crate::internal::TokenRecord)>);

impl tokens::TokenBook for Book {
    fn find(&self, id: &str) -> Option<crate::internal::TokenRecord> {
        self.0
            .iter()
            .find(|(_, r)| r.id == id)
            .map(|(_, r)| r.clone())
    }
}

#[test]
fn bearer_tokens_stand_for_principals_still_in_the_credentials() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let alice = tokens::mint("alice", now, now + 3600.0, "");
    let gone = tokens::mint("carol", now, now + 3600.0, "");
    let book = Book(vec![
        (alice.token.clone(), alice.record),
        (gone.token.clone(), gone.record),
    ]);
    let auth = frameworks_only().with_tokens(Arc::new(book));
    let header = |t: &str| format!("Bearer {t}").into_bytes();
    assert_eq!(
        auth.principal(Realm::Scheduler, Some(&header(&alice.token)))
            .unwrap(),
        Some("alice".to_owned())
    );
    let refused = auth
        .principal(Realm::Scheduler, Some(&header(&gone.token)))
        .unwrap_err();
    assert!(
        refused.why.contains("no longer in --credentials"),
        "{refused}"
    );
    // Agents register with their credential only.
    let agents = Authentication::new(
        Credentials::parse(r#"{"credentials": [{"principal": "alice", "secret": "s"}]}"#).ok(),
        Realms {
            agents: true,
            ..Default::default()
        },
    )
    .unwrap()
    .with_tokens(Arc::new(Book(vec![])));
    let refused = agents
        .principal(Realm::Agent, Some(&header(&alice.token)))
        .unwrap_err();
    assert!(refused.why.contains("not taken here"), "{refused}");
}
