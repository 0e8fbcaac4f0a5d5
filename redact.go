package pginvalidator

import (
	"net/url"
	"regexp"
	"strings"
)

// RedactURL hides the password in a connection URL or a libpq keyword/value
// string, so that it can go into a log line or an error message.
func RedactURL(raw string) string {
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

// RedactError returns err unchanged unless its text contains the password of
// rawURL; then it returns an error with the same text, password replaced.
// Use it on errors from drivers that may echo a connection string.
func RedactError(err error, rawURL string) error {
	if err == nil {
		return nil
	}
	pw := passwordOf(rawURL)
	if pw == "" || !strings.Contains(err.Error(), pw) {
		return err
	}
	return redactedError{msg: strings.ReplaceAll(err.Error(), pw, "REDACTED"), err: err}
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
