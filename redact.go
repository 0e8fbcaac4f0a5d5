package pginvalidator

import (
	"net/url"
	"regexp"
)

// RedactURL hides the password in a connection URL or a libpq keyword/value
// string, so that it can go into a log line or an error message.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err == nil && u.Scheme != "" && u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "REDACTED")
			return u.String()
		}
		return raw
	}
	return keywordPassword.ReplaceAllString(raw, "${1}REDACTED")
}

// keywordPassword matches password=... in libpq keyword/value strings.
var keywordPassword = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)
