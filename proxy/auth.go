package proxy

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"unicode"
)

// keyring checks write keys. Keys are compared as SHA-256 digests so that
// every comparison takes the same time whatever the candidate's length, and
// every configured key is compared, so the time does not say which matched.
type keyring struct {
	keys   []string
	hashes [][sha256.Size]byte
	// last interns the most recent key when any key is accepted, so a
	// steady stream of requests under one key allocates no strings.
	last atomic.Pointer[string]
}

func newKeyring(keys []string) *keyring {
	k := &keyring{keys: keys}
	for _, key := range keys {
		k.hashes = append(k.hashes, sha256.Sum256([]byte(key)))
	}
	return k
}

// resolve returns the key as a string safe to keep past the request, and
// whether it is accepted.
func (k *keyring) resolve(b []byte) (string, bool) {
	if len(k.keys) == 0 {
		if len(b) == 0 {
			return "", true
		}
		if p := k.last.Load(); p != nil && *p == string(b) {
			return *p, true
		}
		s := string(b)
		k.last.Store(&s)
		return s, true
	}
	if len(b) == 0 {
		return "", false
	}
	h := sha256.Sum256(b)
	match := -1
	for i := range k.hashes {
		eq := subtle.ConstantTimeCompare(h[:], k.hashes[i][:])
		match = subtle.ConstantTimeSelect(eq, i, match)
	}
	if match < 0 {
		return "", false
	}
	return k.keys[match], true
}

// basicUser returns the user name of an "Authorization: Basic" header, which
// is where the Segment SDKs put the write key, decoded into buf when it
// fits. It returns nil for any other or malformed header.
func basicUser(h, buf []byte) []byte {
	const prefix = "basic "
	if len(h) < len(prefix) || !bytes.EqualFold(h[:len(prefix)], []byte(prefix)) {
		return nil
	}
	enc := bytes.TrimSpace(h[len(prefix):])
	if n := base64.StdEncoding.DecodedLen(len(enc)); n > len(buf) {
		buf = make([]byte, n)
	}
	n, err := base64.StdEncoding.Decode(buf, enc)
	if err != nil {
		return nil
	}
	user := buf[:n]
	if i := bytes.IndexByte(user, ':'); i >= 0 {
		user = user[:i]
	}
	return user
}

// bearerMatches reports whether h is "Bearer <token>", in constant time.
func bearerMatches(h []byte, token string) bool {
	const prefix = "bearer "
	if token == "" || len(h) < len(prefix) || !bytes.EqualFold(h[:len(prefix)], []byte(prefix)) {
		return false
	}
	got := sha256.Sum256(bytes.TrimSpace(h[len(prefix):]))
	want := sha256.Sum256([]byte(token))
	return subtle.ConstantTimeCompare(got[:], want[:]) == 1
}

// SetWriteKeys replaces the accepted write keys at once: requests parsed
// from then on are checked against keys. Empty accepts any key, as an
// empty Config.WriteKeys does.
func (s *Server) SetWriteKeys(keys []string) error {
	if slices.Contains(keys, "") {
		return errors.New("proxy: empty write key")
	}
	s.pp.keys.Store(newKeyring(slices.Clone(keys)))
	return nil
}

// Reload rereads --write-key-file and the --tls-cert/--tls-key pair, as
// SIGHUP asks once a Kubernetes secret has been updated. Whatever fails to
// load is reported and the old value kept: a half-written secret neither
// locks clients out nor, being empty, opens the door to any key.
func (s *Server) Reload() error {
	s.reloadPlan() // logs its own outcome: it is not a secret
	var errs []error
	if s.cfg.WriteKeyFile != "" {
		keys, err := acceptedKeys(s.cfg)
		if err == nil {
			err = s.SetWriteKeys(keys)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	if s.certs != nil {
		if err := s.certs.load(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// maxKeyFileBytes bounds --write-key-file: a secret, not a data set.
const maxKeyFileBytes = 1 << 20

// acceptedKeys is cfg.WriteKeys and the keys of cfg.WriteKeyFile.
func acceptedKeys(cfg Config) ([]string, error) {
	keys := slices.Clone(cfg.WriteKeys)
	if cfg.WriteKeyFile == "" {
		return keys, nil
	}
	fromFile, err := ReadWriteKeyFile(cfg.WriteKeyFile)
	if err != nil {
		return nil, err
	}
	for _, k := range fromFile {
		if !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	return keys, nil
}

// ReadWriteKeyFile reads write keys from path, one a line; blank lines and
// lines starting with # are skipped, and surrounding white space (a CRLF, a
// trailing newline) is not part of a key; white space inside one is an
// error. A file without any key is an error, since no keys would mean that
// any key is accepted. Errors never quote the file, which holds secrets.
func ReadWriteKeyFile(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read --write-key-file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read --write-key-file %s: %w", path, err)
	}
	if len(b) > maxKeyFileBytes {
		return nil, fmt.Errorf("read --write-key-file %s: over %d bytes", path, maxKeyFileBytes)
	}
	var keys []string
	n := 0
	for line := range strings.Lines(string(b)) {
		n++
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		// No SDK sends a key with white space in it: such a line is most
		// likely a key with a comment after it, which would lock its
		// clients out.
		if strings.ContainsFunc(line, unicode.IsSpace) {
			return nil, fmt.Errorf("--write-key-file %s line %d: white space inside a key (comments go on lines of their own)", path, n)
		}
		keys = append(keys, line)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("--write-key-file %s holds no write key", path)
	}
	return keys, nil
}
