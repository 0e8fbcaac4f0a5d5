package pginvalidator

import (
	"errors"
	"strings"
	"testing"
)

func TestRedactURL(t *testing.T) {
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
		if got := RedactURL(tt.in); got != tt.want {
			t.Errorf("RedactURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestRedactError(t *testing.T) {
	base := errors.New("cannot connect to postgres://app:s3cret@db/app")
	err := RedactError(base, "postgres://app:s3cret@db/app")
	if strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("RedactError kept the password: %v", err)
	}
	if !errors.Is(err, base) {
		t.Fatal("RedactError broke errors.Is")
	}
	if other := errors.New("no password here"); RedactError(other, "postgres://app:s3cret@db/app") != other {
		t.Fatal("RedactError changed an error that holds no password")
	}
}
