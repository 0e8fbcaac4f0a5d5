package redact

import (
	"errors"
	"strings"
	"testing"
)

func TestURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"postgres://app:s3cret@db:5432/app", "postgres://app:REDACTED@db:5432/app"},
		{"postgres://app@db/app", "postgres://app@db/app"},
		{"redis://:s3cret@cache:6379/0", "redis://:REDACTED@cache:6379/0"},
		{"redis://u:s3cret@cache:notaport/0", "redis://u:REDACTED@cache:notaport/0"},
		{"postgres://app@db/app?sslmode=disable&password=s3cret", "postgres://app@db/app?password=REDACTED&sslmode=disable"},
		{"host=db user=app password=s3cret dbname=app", "host=db user=app password=REDACTED dbname=app"},
		{"host=db password='s3 cret' dbname=app", "host=db password=REDACTED dbname=app"},
	}
	for _, tt := range tests {
		if got := URL(tt.in); got != tt.want {
			t.Errorf("URL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestError(t *testing.T) {
	base := errors.New("cannot connect to postgres://app:s3cret@db/app")
	err := Error(base, "postgres://app:s3cret@db/app")
	if strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("RedactError kept the password: %v", err)
	}
	if !errors.Is(err, base) {
		t.Fatal("RedactError broke errors.Is")
	}
	if other := errors.New("no password here"); Error(other, "postgres://app:s3cret@db/app") != other {
		t.Fatal("Error changed an error that holds no password")
	}
	if got := Secrets(errors.New("auth hunter2 failed"), "", "hunter2").Error(); got != "auth REDACTED failed" {
		t.Errorf("Secrets = %q, want the secret replaced", got)
	}
}

func TestText(t *testing.T) {
	got := Text("dial redis://u:s3cret@cache:6379/0 failed; auth hunter2 refused", "hunter2", "")
	if want := "dial redis://u:REDACTED@cache:6379/0 failed; auth REDACTED refused"; got != want {
		t.Errorf("Text = %q, want %q", got, want)
	}
}
