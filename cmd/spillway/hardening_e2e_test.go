package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spillwayhq/spillway/internal/testkit"
)

// TestWriteKeysNeverLeak runs spillway at debug level with write keys from
// flags, from --write-key-file (rotated with SIGHUP) and in a destination
// URL, drives every path that touches a key (accepted and refused
// requests, malformed requests carrying one, dead letters, a refusing and a
// misconfigured destination, metrics, status, dead-letter listings online
// and offline) and then greps everything the process and its commands
// printed: no key may appear, only masked.
func TestWriteKeysNeverLeak(t *testing.T) {
	const (
		flagKey  = "wk_flag_LEAKCHECK_1111111111"
		fileKey1 = "wk_file_LEAKCHECK_2222222222"
		fileKey2 = "wk_file_LEAKCHECK_3333333333"
		destKey  = "wk_dest_LEAKCHECK_4444444444"
		badKey   = "wk_nope_LEAKCHECK_5555555555"
	)
	keys := []string{flagKey, fileKey1, fileKey2, destKey, badKey}
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "write-keys")
	replaceFile(t, keyFile, []byte("# mounted from a secret\n"+fileKey1+"\n"))

	misconfigured := newSink(t)
	misconfigured.setStatus(http.StatusUnauthorized)
	rejecting := newSink(t)
	rejecting.setStatus(http.StatusBadRequest)
	var stdout testkit.Buffer
	// The destinations never drain: a short drain keeps the stop quick.
	p := startSpillway(t, "", &stdout, "--shutdown-timeout", "1s",
		"--spool-dir", filepath.Join(dir, "spool"), "--log-level", "debug",
		"--write-key", flagKey, "--write-key-file", keyFile,
		"--destination", "hook="+misconfigured.URL+"/hook?backoff_min=10ms&backoff_max=100ms&flush=10ms",
		"--destination", "seg=segment+"+rejecting.URL+"?write_key="+destKey+"&backoff_min=10ms&backoff_max=100ms&flush=10ms")
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	var outputs []string // everything printed or answered that must hold no key

	post := func(path, body string, headers ...string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, p.url()+path, strings.NewReader(body))
		for _, h := range headers {
			k, v, _ := strings.Cut(h, ": ")
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode == http.StatusOK {
			outputs = append(outputs, string(b))
		}
		return resp.StatusCode
	}
	basic := func(k string) string {
		return "Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(k+":"))
	}
	ev := `{"type":"track","userId":"u","event":"e"}`
	for _, c := range []struct {
		path, body string
		headers    []string
		want       int
	}{
		{"/v1/batch", `{"batch":[` + ev + `,{"type":"track","userId":"u"}]}`, []string{basic(flagKey)}, 200}, // one dead letter "invalid"
		{"/v1/t", `{"writeKey":"` + fileKey1 + `","userId":"u","event":"e"}`, nil, 200},
		{"/v1/batch", `{"batch":[` + ev + `]}`, []string{basic(badKey)}, 401},
		{"/v1/batch", `{"writeKey":"` + badKey + `","batch":[` + ev + `]}`, nil, 401},
		{"/v1/batch", `{"writeKey":"` + flagKey + `","batch":[` + ev, nil, 400},
	} {
		if got := post(c.path, c.body, c.headers...); got != c.want {
			t.Fatalf("POST %s = %d, want %d", c.path, got, c.want)
		}
	}
	// Malformed requests carrying a key, which fasthttp logs at debug.
	for _, raw := range []string{
		"POST /v1/track HTTP/1.1\r\nHost: x\r\n" + basic(flagKey) + "\r\nX-Pad: " + strings.Repeat("p", 16<<10) + "\r\n\r\n",
		"POST /v1/track HTTP/1.1\r\nHost: x\r\n" + basic(flagKey) + "\r\nContent-Length: nope\r\n\r\n",
		"GARBAGE " + flagKey + "\r\n\r\n",
	} {
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, raw)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.Copy(io.Discard, c)
		c.Close()
	}

	// Rotate the file's key: SIGHUP makes the new one count at once.
	replaceFile(t, keyFile, []byte(fileKey2+"\n"))
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, func() bool { return strings.Contains(p.stderr.String(), "reloaded secrets") }, "the secrets reload")
	if got := post("/v1/t", `{"userId":"u","event":"e"}`, basic(fileKey2)); got != 200 {
		t.Fatalf("the rotated key: %d, want 200", got)
	}
	if got := post("/v1/t", `{"userId":"u","event":"e"}`, basic(fileKey1)); got != 401 {
		t.Fatalf("the retired key: %d, want 401", got)
	}

	get := func(path string) string {
		t.Helper()
		resp, err := client.Get(p.url() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	// Wait until the seg destination has dead-lettered what it refused and
	// the hook one is reported misconfigured.
	testkit.Eventually(t, func() bool {
		return strings.Count(get("/admin/dlq?destination=seg"), "\n") >= 3
	}, "dead letters from the refusing destination")
	testkit.Eventually(t, func() bool {
		return strings.Contains(get("/admin/status"), `"misconfigured"`)
	}, "the misconfigured destination")
	dlq := get("/admin/dlq")
	if !strings.Contains(dlq, `"write_key":"wk_f…"`) {
		t.Errorf("dead-letter listing without masked keys:\n%s", dlq)
	}
	outputs = append(outputs, dlq, get("/admin/status"), get("/metrics"), get("/admin/events"))
	for _, args := range [][]string{{"status", "--addr", p.addr}, {"status", "--json", "--addr", p.addr}, {"dlq", "list", "--addr", p.addr}} {
		outputs = append(outputs, runCommand(t, args...))
	}
	if code := p.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	outputs = append(outputs, runCommand(t, "dlq", "list", "--spool-dir", filepath.Join(dir, "spool")))

	logs := p.stderr.String()
	for _, want := range []string{"destination misconfigured", "reloaded secrets", "level=DEBUG"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the logs lack %q: the check would prove little", want)
		}
	}
	outputs = append(outputs, logs, stdout.String())
	for _, out := range outputs {
		for _, k := range keys {
			if i := strings.Index(out, k); i >= 0 {
				t.Errorf("write key %s printed: …%s…", k, out[max(0, i-200):min(len(out), i+100)])
			}
			// Logs could also hold it base64-encoded, as in its header.
			if b := base64.StdEncoding.EncodeToString([]byte(k + ":")); strings.Contains(out, b) {
				t.Errorf("write key %s printed base64-encoded", k)
			}
		}
	}
}

// runCommand runs the spillway binary with args and returns its output.
func runCommand(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(binary, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("spillway %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// replaceFile writes path as Kubernetes updates a mounted secret: a new
// file moved over the old one.
func replaceFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path+".new", b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
}

// TestSpoolAndFilesArePrivate: spillway's umask makes everything it creates
// readable by its own user only, whatever the umask it was started with:
// the spool (Badger creates its files 0644 by default) and a file
// destination hold personal data.
func TestSpoolAndFilesArePrivate(t *testing.T) {
	dir := t.TempDir()
	spoolDir := filepath.Join(dir, "spool")
	out := filepath.Join(dir, "out", "events.ndjson")
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		t.Fatal(err)
	}
	old := syscall.Umask(0o022) // what the process would otherwise get
	defer syscall.Umask(old)
	p := startSpillway(t, "", io.Discard, "--spool-dir", spoolDir, "--destination", "file=file://"+out, "--flush-interval", "10ms")
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	if code, err := postBatch(t.Context(), client, p.url(), "", trackEvents("private", 50)); err != nil || code != 200 {
		t.Fatalf("post: %d %v", code, err)
	}
	testkit.Eventually(t, func() bool { return len(readNDJSON(t, out)) == 50 }, "delivery to the file")
	if code := p.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	// The dlq commands open the stopped spool, and write to it, too.
	if out, err := exec.CommandContext(t.Context(), binary, "dlq", "replay", "--spool-dir", spoolDir).CombinedOutput(); err != nil {
		t.Fatalf("dlq replay: %v: %s", err, out)
	}
	var files int
	check := func(path string) {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			t.Errorf("%s is %v: others may read it", path, perm)
		}
		if fi.Mode().IsRegular() {
			files++
		}
	}
	if err := filepath.WalkDir(spoolDir, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		check(path)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	check(out)
	if files < 3 {
		t.Fatalf("only %d files checked: the spool is not where the test looks", files)
	}
}

// TestHTTPSAndMaxConns serves HTTPS with a generated certificate, reloads
// it on SIGHUP, and caps connections with --max-conns.
func TestHTTPSAndMaxConns(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	pool := writeCert(t, certFile, keyFile, 1)
	admin := freeAddr(t)
	var stdout testkit.Buffer
	// The admin listener stays plain HTTP: readiness is polled there.
	p := &process{t: t, addr: freeAddr(t), stderr: &testkit.Buffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(binary, "run", "--listen", p.addr, "--admin-listen", admin, "--spool-dir", filepath.Join(dir, "spool"),
		"--tls-cert", certFile, "--tls-key", keyFile, "--max-conns", "3")
	p.cmd.Stdout, p.cmd.Stderr = &stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(p.kill)
	testkit.Eventually(t, func() bool {
		resp, err := http.Get("http://" + admin + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, "readiness")
	http.DefaultClient.CloseIdleConnections()

	serial := func(pool *x509.CertPool) (int64, int) {
		t.Helper()
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Post("https://"+p.addr+"/v1/track",
			"application/json", strings.NewReader(`{"userId":"u","event":"e"}`))
		if err != nil {
			return 0, 0
		}
		resp.Body.Close()
		return resp.TLS.PeerCertificates[0].SerialNumber.Int64(), resp.StatusCode
	}
	if s, code := serial(pool); s != 1 || code != 200 {
		t.Fatalf("serial %d, status %d", s, code)
	}
	pool2 := writeCert(t, certFile, keyFile, 2)
	p.cmd.Process.Signal(syscall.SIGHUP)
	testkit.Eventually(t, func() bool { s, _ := serial(pool2); return s == 2 }, "the new certificate")

	// --max-conns 3: three idle keep-alive connections hold every slot.
	request := "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
	serve := func() *tls.Conn {
		c, err := tls.Dial("tcp", p.addr, &tls.Config{RootCAs: pool2})
		if err != nil {
			return nil
		}
		io.WriteString(c, request)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || resp.StatusCode != 200 {
			c.Close()
			return nil
		}
		return c
	}
	testkit.Eventually(t, func() bool {
		var held []*tls.Conn
		for range 3 {
			if c := serve(); c != nil {
				held = append(held, c)
			}
		}
		if len(held) == 3 {
			t.Cleanup(func() {
				for _, c := range held {
					c.Close()
				}
			})
			return true
		}
		for _, c := range held {
			c.Close()
		}
		time.Sleep(100 * time.Millisecond)
		return false
	}, "three connections served")
	// Over TLS fasthttp closes a fourth connection without an answer:
	// writing one would first wait for the client's handshake, which would
	// then succeed. The dialer's limit only keeps a hung server from
	// hanging the test.
	dialer := &net.Dialer{Timeout: testkit.Patience}
	if c, err := tls.DialWithDialer(dialer, "tcp", p.addr, &tls.Config{RootCAs: pool2}); err == nil {
		c.Close()
		t.Fatal("a fourth connection was served past --max-conns 3")
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a fourth connection was neither served nor closed: %v", err)
	}
	if code := p.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// writeCert writes a new self-signed certificate for 127.0.0.1 over the
// files, and returns a pool that trusts it.
func writeCert(t *testing.T, certFile, keyFile string, serial int64) *x509.CertPool {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: fmt.Sprint("spillway ", serial)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	replaceFile(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	replaceFile(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return pool
}
