// Package redact hides passwords before they reach a log line or an error
// message. Every package that prints a connection string or a driver's
// error goes through it, so there is one definition of what a password
// looks like.
package redact

import (
	"net/url"
	"regexp"
	"strings"
)

// secretParams are the connection parameters that hold a secret, in URLs
// and in libpq keyword/value strings: the password, and sslpassword, the
// passphrase of the client certificate's key.
var secretParams = []string{"password", "sslpassword"}

// URL hides every secret in a connection URL (the password of its user
// info, and any password or sslpassword parameter) or in a libpq
// keyword/value string, so that it can go into a log line or an error
// message.
func URL(raw string) string {
	u, err := url.Parse(raw)
	if err == nil && u.Scheme != "" {
		changed := false
		if u.User != nil {
			if _, ok := u.User.Password(); ok {
				u.User = url.UserPassword(u.User.Username(), "REDACTED")
				changed = true
			}
		}
		q := u.Query()
		for _, p := range secretParams {
			if q.Has(p) {
				q.Set(p, "REDACTED")
				changed = true
			}
		}
		if changed {
			u.RawQuery = q.Encode()
			return u.String()
		}
		return raw
	}
	if strings.Contains(raw, "://") { // a URL url.Parse rejects (a bad port, say)
		raw = urlPassword.ReplaceAllString(raw, "${1}REDACTED@")
		return queryPassword.ReplaceAllString(raw, "${1}REDACTED")
	}
	return keywordPassword.ReplaceAllString(raw, "${1}REDACTED")
}

// urlPassword matches the password of scheme://user:password@ in any text.
var urlPassword = regexp.MustCompile(`([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s]*@`)

// queryPassword matches a password or sslpassword parameter of a URL's query.
var queryPassword = regexp.MustCompile(`(?i)([?&](?:ssl)?password=)[^&#\s]*`)

// keywordPassword matches password=... and sslpassword=... in libpq
// keyword/value strings, the value bare or single-quoted.
var keywordPassword = regexp.MustCompile(`(?i)(\b(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)

// Text hides, anywhere in s, the password of every scheme://user:password@,
// every password or sslpassword parameter of a URL, and each of secrets
// (empty ones are ignored). Use it on text that did not come from one known
// URL, such as a client library's own log lines.
func Text(s string, secrets ...string) string {
	s = urlPassword.ReplaceAllString(s, "${1}REDACTED@")
	s = queryPassword.ReplaceAllString(s, "${1}REDACTED")
	for _, pw := range secrets {
		if pw != "" {
			s = strings.ReplaceAll(s, pw, "REDACTED")
		}
	}
	return s
}

// Error returns err unchanged unless its text contains a secret of rawURL
// (see URL); then it returns an error with the same text, secrets replaced.
// Use it on errors from drivers that may echo a connection string or one of
// its values.
func Error(err error, rawURL string) error {
	return Secrets(err, secretsOf(rawURL)...)
}

// Secrets returns err unchanged unless its text contains one of secrets
// (empty ones are ignored); then it returns an error with the same text,
// each secret replaced. errors.Is and errors.As still see err.
func Secrets(err error, secrets ...string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	for _, s := range secrets {
		if s != "" {
			msg = strings.ReplaceAll(msg, s, "REDACTED")
		}
	}
	if msg == err.Error() {
		return err
	}
	return redactedError{msg: msg, err: err}
}

type redactedError struct {
	msg string
	err error
}

func (e redactedError) Error() string { return e.msg }

// Unwrap keeps errors.Is and errors.As working; the wrapped error's own text
// must not be printed.
func (e redactedError) Unwrap() error { return e.err }

// secretsOf returns the secrets of a connection URL or keyword/value string:
// for a URL, each as written and as decoded, since a driver may echo
// either.
func secretsOf(raw string) []string {
	var secrets []string
	if u, err := url.Parse(raw); err == nil && u.Scheme != "" {
		if u.User != nil {
			pw, _ := u.User.Password()
			secrets = append(secrets, pw)
		}
		q := u.Query()
		for _, p := range secretParams {
			secrets = append(secrets, q[p]...)
		}
	}
	if strings.Contains(raw, "://") {
		for _, m := range urlPassword.FindAllStringSubmatch(raw, -1) {
			secrets = append(secrets, strings.TrimSuffix(strings.TrimPrefix(m[0], m[1]), "@"))
		}
		for _, m := range queryPassword.FindAllStringSubmatch(raw, -1) {
			v := strings.TrimPrefix(m[0], m[1])
			secrets = append(secrets, v)
			if d, err := url.QueryUnescape(v); err == nil {
				secrets = append(secrets, d)
			}
		}
		return secrets
	}
	for _, m := range keywordPassword.FindAllStringSubmatch(raw, -1) {
		v := m[2]
		if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' {
			v = strings.NewReplacer(`\'`, `'`, `\\`, `\`).Replace(v[1 : len(v)-1])
		}
		secrets = append(secrets, v)
	}
	return secrets
}
