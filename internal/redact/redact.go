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

// URL hides the password in a connection URL or a libpq keyword/value
// string, so that it can go into a log line or an error message.
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
		if q := u.Query(); q.Has("password") {
			q.Set("password", "REDACTED")
			u.RawQuery = q.Encode()
			changed = true
		}
		if changed {
			return u.String()
		}
		return raw
	}
	// Not a URL url.Parse accepts (a bad port, say): still hide user:pw@.
	raw = urlPassword.ReplaceAllString(raw, "${1}REDACTED@")
	return keywordPassword.ReplaceAllString(raw, "${1}REDACTED")
}

// urlPassword matches the password of scheme://user:password@ in any text.
var urlPassword = regexp.MustCompile(`([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s]*@`)

// keywordPassword matches password=... in libpq keyword/value strings.
var keywordPassword = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)

// Text hides, anywhere in s, the password of every scheme://user:password@
// and each of secrets (empty ones are ignored). Use it on text that did not
// come from one known URL, such as a client library's own log lines.
func Text(s string, secrets ...string) string {
	s = urlPassword.ReplaceAllString(s, "${1}REDACTED@")
	for _, pw := range secrets {
		if pw != "" {
			s = strings.ReplaceAll(s, pw, "REDACTED")
		}
	}
	return s
}

// Error returns err unchanged unless its text contains the password of
// rawURL; then it returns an error with the same text, password replaced.
// Use it on errors from drivers that may echo a connection string.
func Error(err error, rawURL string) error {
	return Secrets(err, passwordOf(rawURL))
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

func passwordOf(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.Scheme != "" {
		if pw := u.Query().Get("password"); pw != "" {
			return pw
		}
		if u.User != nil {
			pw, _ := u.User.Password()
			return pw
		}
		return ""
	}
	if m := urlPassword.FindStringSubmatch(raw); m != nil {
		return strings.TrimSuffix(strings.TrimPrefix(m[0], m[1]), "@")
	}
	if m := keywordPassword.FindStringSubmatch(raw); m != nil {
		return strings.Trim(m[2], "'")
	}
	return ""
}
