package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	t    *testing.T
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	File string // the CA certificate, PEM
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	ca := &testCA{t: t, dir: t.TempDir()}
	ca.cert, ca.key = ca.issue(name, &x509.Certificate{
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	})
	ca.File = ca.write(name+".pem", "CERTIFICATE", ca.cert.Raw)
	return ca
}

// issue signs a certificate for cn from tmpl with a new key; the CA signs
// itself while ca.cert is nil.
func (ca *testCA) issue(cn string, tmpl *x509.Certificate) (*x509.Certificate, *ecdsa.PrivateKey) {
	ca.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		ca.t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		ca.t.Fatal(err)
	}
	tmpl.SerialNumber = serial
	tmpl.Subject = pkix.Name{CommonName: cn}
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	parent, signer := tmpl, key
	if ca.cert != nil {
		parent, signer = ca.cert, ca.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		ca.t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		ca.t.Fatal(err)
	}
	return cert, key
}

// leaf issues a server or client certificate and writes it and its key;
// it returns the two file names.
func (ca *testCA) leaf(cn string, usage x509.ExtKeyUsage, dnsNames []string, ips []net.IP) (certFile, keyFile string) {
	ca.t.Helper()
	cert, key := ca.issue(cn, &x509.Certificate{
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{usage},
		DNSNames:    dnsNames,
		IPAddresses: ips,
	})
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		ca.t.Fatal(err)
	}
	return ca.write(cn+".crt", "CERTIFICATE", cert.Raw), ca.write(cn+".key", "PRIVATE KEY", der)
}

func (ca *testCA) write(name, typ string, der []byte) string {
	ca.t.Helper()
	path := filepath.Join(ca.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		ca.t.Fatal(err)
	}
	return path
}

// withParams returns rawURL with the query parameters set.
func withParams(t *testing.T, rawURL string, kv ...string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	for i := 0; i+1 < len(kv); i += 2 {
		q.Set(kv[i], kv[i+1])
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// TestPgTLSVerifyFullWithClientCert runs the daemon against a PostgreSQL that
// admits TCP only over TLS and only with a client certificate, using libpq's
// sslmode, sslrootcert, sslcert and sslkey in the URL. The replication
// connection must keep them: without them it could not log in at all.
func TestPgTLSVerifyFullWithClientCert(t *testing.T) {
	ca := newTestCA(t, "pginv-test-ca")
	serverCert, serverKey := ca.leaf("localhost", x509.ExtKeyUsageServerAuth,
		[]string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1")})
	clientCert, clientKey := ca.leaf("postgres", x509.ExtKeyUsageClientAuth, nil, nil)

	pg, err := localsvc.StartPostgres(context.Background(), localsvc.PostgresOptions{TLS: &localsvc.PostgresTLS{
		CertFile: serverCert, KeyFile: serverKey, CAFile: ca.File, ClientCert: true,
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Close() })
	serverURL := withParams(t, pg.URL(), "sslmode", "verify-full", "sslrootcert", ca.File,
		"sslcert", clientCert, "sslkey", clientKey)

	// The replication URL keeps every TLS setting.
	repl, err := replication.ReplicationURL(serverURL)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"sslmode=verify-full", "sslrootcert=", "sslcert=", "sslkey=", "replication=database"} {
		if !strings.Contains(repl, p) {
			t.Fatalf("ReplicationURL(%s) = %s, lost %s", serverURL, repl, p)
		}
	}

	f := newFixtureOn(t, serverURL, env.RedisURL, itemsSchema, markerSchema)
	rules := f.rules(itemsRules)
	f.startProcess(rules)
	f.waitSlotActive("pg_invalidator", nil)

	// The walsender's connection is the one that streams: it is encrypted.
	var ssl bool
	var version, clientDN string
	err = f.db.QueryRow(context.Background(), `
SELECT s.ssl, s.version, coalesce(s.client_dn, '')
FROM pg_replication_slots r JOIN pg_stat_ssl s ON s.pid = r.active_pid
WHERE r.slot_name = 'pg_invalidator'`).Scan(&ssl, &version, &clientDN)
	if err != nil {
		t.Fatal(err)
	}
	if !ssl || !strings.Contains(clientDN, "postgres") {
		t.Fatalf("replication connection: ssl=%v client_dn=%q, want TLS with the client certificate", ssl, clientDN)
	}
	t.Logf("replication connection: %s, client certificate %s", version, clientDN)

	f.cache("item:1", "items:cat:1")
	f.exec("UPDATE items SET v = v + 1 WHERE id = 1")
	f.waitGone("item:1", "items:cat:1")

	// What check says when TLS cannot be set up. A password in the URL must
	// not show.
	const secret = "tls-s3cr3t"
	withPassword := strings.Replace(f.dbURL, "postgres@", "postgres:"+secret+"@", 1)
	wrongCA := newTestCA(t, "some-other-ca")
	for _, c := range []struct {
		name string
		url  string
		want string
	}{
		{"wrong CA", withParams(t, withPassword, "sslrootcert", wrongCA.File), "certificate signed by unknown authority"},
		{"no TLS", withParams(t, withPassword, "sslmode", "disable"), "no encryption"},
		{"no client certificate", withParams(t, withPassword, "sslcert", "", "sslkey", ""), "certificate"},
		{"missing CA file", withParams(t, withPassword, "sslrootcert", wrongCA.File+".missing"), "unable to read CA file"},
	} {
		out, err := exec.Command(daemonBinary(t), "check", "--config", rules, "--postgres", c.url).CombinedOutput()
		if err == nil {
			t.Fatalf("%s: check succeeded:\n%s", c.name, out)
		}
		if !strings.Contains(string(out), c.want) {
			t.Errorf("%s: check said:\n%s\nwant it to mention %q", c.name, out, c.want)
		}
		if strings.Contains(string(out), secret) {
			t.Errorf("%s: check printed the password:\n%s", c.name, out)
		}
		t.Logf("%s: %s", c.name, strings.TrimSpace(string(out)))
	}
}
