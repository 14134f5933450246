use super::*;

fn load(text: &str) -> Result<Templates, TemplateError> {
    Templates::load(vec![(
        "app.conf".into(),
        PathBuf::from("/etc/fyvault/app.conf.j2"),
        text.into(),
        Shown::default(),
    )])
}

fn render(t: &Templates, values: &[(&str, &[u8])]) -> Result<String, RenderError> {
    let secrets: Vec<(&str, Secret)> = values
        .iter()
        .map(|(n, v)| (*n, Secret::copy_from(v)))
        .collect();
    let refs: Vec<(&str, &Secret)> = secrets.iter().map(|(n, s)| (*n, s)).collect();
    t.render("app.conf", &refs)
        .map(|s| String::from_utf8(s.expose().to_vec()).unwrap())
}

#[test]
fn renders_values_and_escapes() {
    let t = load(
        "url={{ DB_URL }}\njson={{ DB_URL | json }}\nq={{ PASS | url }}\nsh={{ PASS | shell }}\n",
    )
    .unwrap();
    assert_eq!(t.get("app.conf").unwrap().uses, ["DB_URL", "PASS"]);
    let out = render(
        &t,
        &[("DB_URL", b"postgres://a\"b"), ("PASS", b"it's a/b&c")],
    )
    .unwrap();
    assert_eq!(
        out,
        "url=postgres://a\"b\njson=\"postgres://a\\\"b\"\nq=it%27s%20a%2Fb%26c\nsh='it'\\''s a/b&c'\n",
        "the trailing newline is kept"
    );
    // Filters on plain strings too, and control flow.
    let t = load("{% for x in ['a b'] %}{{ x | url }}{% endfor %}{{ K | upper }}").unwrap();
    assert_eq!(render(&t, &[("K", b"k")]).unwrap(), "a%20bK");
}

#[test]
fn missing_values_and_bad_bytes_fail_the_rendering() {
    let t = load("{{ A }}{{ B }}").unwrap();
    let e = render(&t, &[("A", b"x")]).unwrap_err();
    assert!(e.message.contains("undefined"), "{e}");
    let e = render(&t, &[("A", b"\xff"), ("B", b"y")]).unwrap_err();
    assert_eq!(e.message, "A is not UTF-8 text");
}

#[test]
fn bad_templates_are_refused_with_file_and_line() {
    let e = load("ok\nalso ok\n{% if %}\n").unwrap_err();
    let line = e.to_string();
    assert!(
        line.starts_with("/etc/fyvault/app.conf.j2: line 3: "),
        "{line}"
    );
    assert!(!line.contains('\n'));
    let e = load("{{ lower_name }}").unwrap_err();
    assert!(e.to_string().contains("\"lower_name\""), "{e}");
    // No loader: nothing can be included from disk.
    if let Ok(t) = load("{% include '/etc/passwd' %}") {
        assert!(render(&t, &[]).is_err());
    }
}

#[test]
fn runaway_templates_run_out_of_fuel() {
    let t =
        load("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}")
            .unwrap();
    assert!(render(&t, &[]).is_err());
}

#[test]
fn names_cannot_be_secret_names() {
    for ok in ["app.conf", "database.yml", "nginx-tls.inc", "0.env"] {
        assert!(valid_template_name(ok), "{ok}");
    }
    for bad in [
        "STRIPE_SK",
        ".env",
        ".previous",
        "a/b",
        "",
        "App.conf",
        "_x",
    ] {
        assert!(!valid_template_name(bad), "{bad}");
    }
}

#[test]
fn the_writer_grows_without_losing_bytes() {
    use std::io::Write as _;
    let mut w = ZeroizingWriter::default();
    for i in 0..1000u32 {
        write!(w, "{i},").unwrap();
    }
    let s = w.into_secret();
    assert!(s.expose().starts_with(b"0,1,2,") && s.expose().ends_with(b"998,999,"));
}
