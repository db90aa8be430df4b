package proxy

import (
	"crypto/tls"
	"fmt"
	"sync/atomic"
)

// certStore holds the certificate the main listener serves (--tls-cert,
// --tls-key). Reload swaps it whole: handshakes in flight finish with the
// one they started with, new ones get the new one, and a pair that fails
// to load leaves the old one serving.
type certStore struct {
	certFile, keyFile string
	cert              atomic.Pointer[tls.Certificate]
}

func newCertStore(certFile, keyFile string) (*certStore, error) {
	cs := &certStore{certFile: certFile, keyFile: keyFile}
	if err := cs.load(); err != nil {
		return nil, err
	}
	return cs, nil
}

// load reads the pair. Its errors name the files, never their content.
func (cs *certStore) load() error {
	c, err := tls.LoadX509KeyPair(cs.certFile, cs.keyFile)
	if err != nil {
		return fmt.Errorf("load --tls-cert %s and --tls-key %s: %w", cs.certFile, cs.keyFile, err)
	}
	cs.cert.Store(&c)
	return nil
}

// config is the listener's TLS configuration: TLS 1.2 and up, HTTP/1.1
// only (fasthttp does not speak HTTP/2), the current certificate.
func (cs *certStore) config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return cs.cert.Load(), nil
		},
	}
}
