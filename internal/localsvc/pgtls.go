package localsvc

import (
	"fmt"
	"os"
	"path/filepath"
)

// PostgresTLS turns TLS on for a server started by StartPostgres: ssl=on with
// the given files, and a pg_hba.conf that admits TCP connections only over
// TLS (hostssl). Unix-socket connections stay trusted, so that the server's
// owner can always get in.
type PostgresTLS struct {
	// CertFile and KeyFile are the server's certificate chain and private
	// key, in PEM. They are copied into the data directory, owned by the
	// server's OS user, the key with mode 0600 as PostgreSQL demands.
	CertFile, KeyFile string
	// CAFile is the CA, in PEM, that client certificates must chain to
	// (ssl_ca_file). Empty means client certificates are not asked for.
	CAFile string
	// ClientCert makes TCP logins authenticate with a client certificate
	// whose common name is the role name (pg_hba method "cert"). It needs
	// CAFile. False means TLS with trust: any role, no password.
	ClientCert bool
}

// setupTLS copies the certificate files into the data directory, writes
// pg_hba.conf and returns the server settings that turn TLS on.
func (p *Postgres) setupTLS(t *PostgresTLS) ([]string, error) {
	if t.CertFile == "" || t.KeyFile == "" {
		return nil, fmt.Errorf("postgres tls: CertFile and KeyFile are both needed")
	}
	if t.ClientCert && t.CAFile == "" {
		return nil, fmt.Errorf("postgres tls: ClientCert needs CAFile, the CA client certificates chain to")
	}
	data := filepath.Join(p.Dir, "data")
	settings := []string{"ssl=on"}
	for _, f := range []struct{ src, name, setting string }{
		{t.CertFile, "server.crt", "ssl_cert_file"},
		{t.KeyFile, "server.key", "ssl_key_file"},
		{t.CAFile, "root.crt", "ssl_ca_file"},
	} {
		if f.src == "" {
			continue
		}
		b, err := os.ReadFile(f.src)
		if err != nil {
			return nil, fmt.Errorf("postgres tls: %w", err)
		}
		dst := filepath.Join(data, f.name)
		if err := p.user.writeFile(dst, b, 0o600); err != nil {
			return nil, fmt.Errorf("postgres tls: %w", err)
		}
		settings = append(settings, f.setting+"="+dst)
	}
	method := "trust"
	if t.ClientCert {
		method = "cert"
	}
	hba := "# Written by localsvc: TCP only over TLS.\n" +
		"local all all trust\n" +
		"hostssl all all 127.0.0.1/32 " + method + "\n"
	if err := p.user.writeFile(filepath.Join(data, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		return nil, fmt.Errorf("postgres tls: %w", err)
	}
	return settings, nil
}

// writeFile writes a file the service user owns, with mode perm.
func (u serviceUser) writeFile(name string, b []byte, perm os.FileMode) error {
	if err := os.WriteFile(name, b, perm); err != nil {
		return err
	}
	if err := os.Chmod(name, perm); err != nil { // WriteFile keeps an old file's mode
		return err
	}
	if u.other {
		return os.Chown(name, u.uid, u.gid)
	}
	return nil
}

// readyURL is what Start polls until the server accepts connections: the TCP
// URL, or the Unix socket when TCP needs a client certificate.
func (p *Postgres) readyURL() string {
	if p.tls {
		return fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres", p.Dir, p.Port)
	}
	return p.URL()
}
