//! Connection URLs in messages: a password never reaches a log line, an
//! error or an event. One function for every URL Slipway shows: the event
//! store's, the broker's, a repository's and a backing service's.

/// `url` with the password of its user part and any `password=` query
/// parameter replaced by `***`: `postgres://user:***@host/db`. Text that is
/// not a URL is returned as it is.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_string() };
    let authority_end = url[scheme_end..].find(['/', '?', '#']).map_or(url.len(), |i| scheme_end + i);
    let authority = &url[scheme_end..authority_end];
    let authority = match authority.rfind('@') {
        Some(at) => match authority[..at].find(':') {
            Some(colon) => format!("{}:***{}", &authority[..colon], &authority[at..]),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    format!("{}{authority}{}", &url[..scheme_end], redact_query(&url[authority_end..]))
}

/// Redacts the values of query parameters whose name mentions a password
/// (libpq and sqlx accept `?password=...`).
fn redact_query(rest: &str) -> String {
    let Some(question) = rest.find('?') else { return rest.to_string() };
    let (path, query) = rest.split_at(question + 1);
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_password_key(key) => format!("{key}=***"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{path}{}", pairs.join("&"))
}

/// Does a query parameter's name say it holds a password?
pub fn is_password_key(key: &str) -> bool {
    key.to_ascii_lowercase().contains("password")
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_in_the_user_part_and_the_query_are_hidden() {
        assert_eq!(redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(redact_url("postgres://u:p@h/db?sslmode=off&password=x"), "postgres://u:***@h/db?sslmode=off&password=***");
        assert_eq!(redact_url("amqp://127.0.0.1:5672/%2f"), "amqp://127.0.0.1:5672/%2f");
        assert_eq!(redact_url("amqp://u@h/v"), "amqp://u@h/v");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
