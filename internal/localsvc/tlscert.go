package localsvc

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestCerts are PEM files made for one test: a CA, a server certificate
// for 127.0.0.1 and localhost that the CA signed, and a client
// certificate the CA signed. Each key sits beside its certificate.
type TestCerts struct {
	CA, CAKey         string
	Server, ServerKey string
	Client, ClientKey string
}

// WriteTestCerts makes a new CA and the certificates it signs, and writes
// them as PEM files in dir. Two calls make two unrelated CAs.
func WriteTestCerts(dir string) (TestCerts, error) {
	c := TestCerts{
		CA: filepath.Join(dir, "ca.pem"), CAKey: filepath.Join(dir, "ca-key.pem"),
		Server: filepath.Join(dir, "server.pem"), ServerKey: filepath.Join(dir, "server-key.pem"),
		Client: filepath.Join(dir, "client.pem"), ClientKey: filepath.Join(dir, "client-key.pem"),
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return c, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pg-invalidator test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return c, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return c, err
	}
	if err := writePEM(c.CA, "CERTIFICATE", caDER); err != nil {
		return c, err
	}
	if err := writeKey(c.CAKey, caKey); err != nil {
		return c, err
	}
	leaf := func(serial int64, name string, usage x509.ExtKeyUsage, certFile, keyFile string) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		}
		if usage == x509.ExtKeyUsageServerAuth {
			tmpl.DNSNames = []string{"localhost"}
			tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		if err := writePEM(certFile, "CERTIFICATE", der); err != nil {
			return err
		}
		return writeKey(keyFile, key)
	}
	if err := leaf(2, "localhost", x509.ExtKeyUsageServerAuth, c.Server, c.ServerKey); err != nil {
		return c, fmt.Errorf("make the server certificate: %w", err)
	}
	if err := leaf(3, "invalidator", x509.ExtKeyUsageClientAuth, c.Client, c.ClientKey); err != nil {
		return c, fmt.Errorf("make the client certificate: %w", err)
	}
	return c, nil
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o644)
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	// Readable by all: the Redis under test may run as another user. These
	// keys guard nothing but a throwaway server.
	return writePEM(path, "PRIVATE KEY", der)
}

// TLSRedis is a private Redis that listens on TLS only, with client
// certificates optional, and with the default user disabled: only User,
// with Password, may connect.
type TLSRedis struct {
	*RedisNode
	Certs    TestCerts
	User     string
	Password string
	dir      string
}

// StartTLSRedis makes certificates in a new directory and starts a
// TLS-only Redis whose only user is user, with password. The password
// goes into an ACL file, not onto the command line or into a log.
func StartTLSRedis(ctx context.Context, user, password string) (*TLSRedis, error) {
	dir, err := os.MkdirTemp("", "pginv-redistls-")
	if err != nil {
		return nil, fmt.Errorf("make the TLS Redis directory: %w", err)
	}
	r := &TLSRedis{User: user, Password: password, dir: dir}
	if r.Certs, err = WriteTestCerts(dir); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	acl := filepath.Join(dir, "users.acl")
	if err := os.WriteFile(acl, []byte(fmt.Sprintf("user default off\nuser %s on >%s ~* &* +@all\n", user, password)), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	r.RedisNode, err = newRedisNode(dir, func(port int, dir string) []string {
		args := baseArgs(port, dir)
		args[1] = "0" // --port 0: no plain TCP
		return append(args, "--tls-port", strconv.Itoa(port), "--tls-cert-file", r.Certs.Server,
			"--tls-key-file", r.Certs.ServerKey, "--tls-ca-cert-file", r.Certs.CA,
			"--tls-auth-clients", "optional", "--aclfile", acl)
	})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	r.ready = func(ctx context.Context) error {
		rdb := r.Client()
		defer rdb.Close()
		return rdb.Ping(ctx).Err()
	}
	if err := r.Start(ctx); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return r, nil
}

// Client returns a client that trusts the test CA and logs in as User.
func (r *TLSRedis) Client() *redis.Client {
	pool := x509.NewCertPool()
	if b, err := os.ReadFile(r.Certs.CA); err == nil {
		pool.AppendCertsFromPEM(b)
	}
	return redis.NewClient(&redis.Options{Addr: r.Addr(), Username: r.User, Password: r.Password,
		TLSConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, DisableIdentity: true, MaxRetries: -1})
}

// Close kills the server and removes the directory.
func (r *TLSRedis) Close() error {
	r.Kill()
	return os.RemoveAll(r.dir)
}
