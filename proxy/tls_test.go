package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testCert is a self-signed certificate for 127.0.0.1 and localhost,
// written as PEM files.
type testCert struct {
	certFile, keyFile string
	cert              *x509.Certificate
	pool              *x509.CertPool // trusts cert
}

func newTestCert(t *testing.T, dir string, serial int64) testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: "spillway test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	tc := testCert{certFile: filepath.Join(dir, "tls.crt"), keyFile: filepath.Join(dir, "tls.key"), cert: cert, pool: x509.NewCertPool()}
	tc.pool.AddCert(cert)
	writeFile(t, tc.certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	writeFile(t, tc.keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	return tc
}

// writeFile replaces path the way a Kubernetes secret update does: a new
// file renamed over the old one.
func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// serveTLS serves s on a real loopback socket until the test ends.
func serveTLS(t *testing.T, s *Server) string {
	t.Helper()
	s.srv.MaxIdleWorkerDuration = 50 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveUntilCleanup(t, s, ln)
	return ln.Addr().String()
}

func httpsClient(t *testing.T, pool *x509.CertPool) *http.Client {
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: patience(t)}
}

func TestTLS(t *testing.T) {
	dir := t.TempDir()
	first := newTestCert(t, dir, 1)
	cfg := DefaultConfig()
	cfg.TLSCertFile, cfg.TLSKeyFile = first.certFile, first.keyFile
	sp := &fakeSpool{}
	s, err := New(cfg, sp, Options{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := serveTLS(t, s)
	track := func(c *http.Client, scheme string) (*http.Response, error) {
		resp, err := c.Post(scheme+"://"+addr+"/v1/track", "application/json", strings.NewReader(`{"userId":"u","event":"e"}`))
		if err == nil {
			resp.Body.Close()
		}
		return resp, err
	}

	t.Run("HTTPS ingest works with the certificate", func(t *testing.T) {
		resp, err := track(httpsClient(t, first.pool), "https")
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK || resp.TLS == nil || resp.TLS.PeerCertificates[0].SerialNumber.Int64() != 1 {
			t.Fatalf("status %d, TLS %v", resp.StatusCode, resp.TLS != nil)
		}
		if resp.TLS.Version < tls.VersionTLS12 {
			t.Errorf("TLS version %x", resp.TLS.Version)
		}
		if n := len(sp.Calls()); n != 1 {
			t.Fatalf("%d appends, want 1", n)
		}
	})
	t.Run("a client that does not trust the certificate fails", func(t *testing.T) {
		_, err := track(httpsClient(t, x509.NewCertPool()), "https")
		var uae x509.UnknownAuthorityError
		if !errors.As(err, &uae) {
			t.Fatalf("err = %v, want an unknown authority", err)
		}
	})
	t.Run("plain HTTP on the HTTPS port stores nothing", func(t *testing.T) {
		before := len(sp.Calls())
		resp, err := track(&http.Client{Timeout: patience(t)}, "http")
		if err == nil && resp.StatusCode == http.StatusOK {
			t.Fatal("plain HTTP was served")
		}
		if len(sp.Calls()) != before {
			t.Fatal("plain HTTP was stored")
		}
	})
	t.Run("TLS 1.1 is refused", func(t *testing.T) {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: first.pool, MaxVersion: tls.VersionTLS11}, DisableKeepAlives: true}}
		if _, err := track(c, "https"); err == nil {
			t.Fatal("TLS 1.1 was accepted")
		}
	})
	t.Run("Reload serves the new certificate, and keeps the old one when the new one is broken", func(t *testing.T) {
		second := newTestCert(t, dir, 2) // overwrites the files
		if err := s.Reload(); err != nil {
			t.Fatal(err)
		}
		resp, err := track(httpsClient(t, second.pool), "https")
		if err != nil {
			t.Fatal(err)
		}
		if got := resp.TLS.PeerCertificates[0].SerialNumber.Int64(); got != 2 {
			t.Fatalf("serial %d after reload, want 2", got)
		}
		writeFile(t, second.keyFile, []byte("-----BEGIN EC PRIVATE KEY-----\nbm90IGEga2V5\n-----END EC PRIVATE KEY-----\n"))
		err = s.Reload()
		if err == nil || !strings.Contains(err.Error(), "--tls-key") {
			t.Fatalf("Reload with a broken key = %v, want an error naming --tls-key", err)
		}
		if strings.Contains(err.Error(), "bm90IGEga2V5") {
			t.Errorf("the error quotes the key file: %v", err)
		}
		resp, err = track(httpsClient(t, second.pool), "https")
		if err != nil || resp.TLS.PeerCertificates[0].SerialNumber.Int64() != 2 {
			t.Fatalf("after a failed reload: %v; want the previous certificate served", err)
		}
	})
}

func TestTLSConfig(t *testing.T) {
	dir := t.TempDir()
	c := newTestCert(t, dir, 1)
	for _, tt := range []struct {
		scenario   string
		cert, key  string
		wantErrHas string
	}{
		{"a certificate without its key is refused", c.certFile, "", "--tls-cert and --tls-key must be given together"},
		{"a key without its certificate is refused", "", c.keyFile, "--tls-cert and --tls-key must be given together"},
		{"a missing file is refused at start", filepath.Join(dir, "nope.crt"), c.keyFile, "load --tls-cert"},
		{"a key that does not match is refused at start", c.certFile, newTestCert(t, t.TempDir(), 9).keyFile, "private key does not match"},
	} {
		t.Run(tt.scenario, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.TLSCertFile, cfg.TLSKeyFile = tt.cert, tt.key
			_, err := New(cfg, &fakeSpool{}, Options{}, nil, nil)
			if err == nil || !strings.Contains(err.Error(), tt.wantErrHas) {
				t.Fatalf("New = %v, want an error with %q", err, tt.wantErrHas)
			}
		})
	}
}
