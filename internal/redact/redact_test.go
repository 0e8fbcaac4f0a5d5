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
		{"postgres://app@db/app?sslmode=require&sslpassword=k3yPass", "postgres://app@db/app?sslmode=require&sslpassword=REDACTED"},
		{"postgres://app:s3cret@db/app?sslpassword=k3yPass&password=other", "postgres://app:REDACTED@db/app?password=REDACTED&sslpassword=REDACTED"},
		{"postgres://app:s3cret@db:notaport/app?sslpassword=k3yPass&sslmode=require", "postgres://app:REDACTED@db:notaport/app?sslpassword=REDACTED&sslmode=require"},
		{"host=db sslpassword=k3yPass sslkey=/k.pem password=s3cret", "host=db sslpassword=REDACTED sslkey=/k.pem password=REDACTED"},
		{"host=db SSLPASSWORD = 'k3y pass' passfile=/p", "host=db SSLPASSWORD = REDACTED passfile=/p"},
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
	for _, tt := range []struct{ raw, msg string }{
		{"postgres://app:s3cret@db/app?sslpassword=k3yPass", "key k3yPass and s3cret refused"},
		{"postgres://app@db/app?sslpassword=k3y%20Pass", "key k3y Pass or k3y%20Pass refused"},
		{"postgres://app:s3cret@db:notaport/app?sslpassword=k3yPass", "key k3yPass and s3cret refused"},
		{"host=db password=s3cret sslpassword='k3y \\'Pass'", "key k3y 'Pass and s3cret refused"},
	} {
		got := Error(errors.New(tt.msg), tt.raw).Error()
		for _, secret := range []string{"s3cret", "k3yPass", "k3y Pass", "k3y%20Pass", "k3y 'Pass"} {
			if strings.Contains(got, secret) {
				t.Errorf("Error(%q, %q) = %q: %q is still there", tt.msg, tt.raw, got, secret)
			}
		}
	}
	if got := Secrets(errors.New("auth hunter2 failed"), "", "hunter2").Error(); got != "auth REDACTED failed" {
		t.Errorf("Secrets = %q, want the secret replaced", got)
	}
}

func TestText(t *testing.T) {
	got := Text("dial redis://u:s3cret@cache:6379/0 failed; auth hunter2 refused; postgres://db/app?sslpassword=k3y&x=1", "hunter2", "")
	if want := "dial redis://u:REDACTED@cache:6379/0 failed; auth REDACTED refused; postgres://db/app?sslpassword=REDACTED&x=1"; got != want {
		t.Errorf("Text = %q, want %q", got, want)
	}
}
