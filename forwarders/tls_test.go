package forwarders

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spillwayhq/spillway/internal/testkit"
)

// selfSigned returns a sink on 127.0.0.1 over HTTPS with a self-signed
// certificate, and the path of that certificate as PEM.
func selfSigned(t *testing.T) (s *testkit.Sink, caFile string) {
	t.Helper()
	s = testkit.NewTLSSink(t, nil)
	caFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, s.CertificatePEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	return s, caFile
}

func TestTLSDestinations(t *testing.T) {
	srv, caFile := selfSigned(t)
	dir := t.TempDir()
	evs := numbered(10)

	t.Run("a self-signed destination without tls_ca is misconfigured: retried slowly, nothing lost", func(t *testing.T) {
		sp := openSpool(t, dir, "dest")
		appendEvents(t, sp, evs...)
		reg := prometheus.NewRegistry()
		startGroup(t, sp, reg, "dest="+srv.URL+"/hook?"+opts(testOpts, "backoff_max=100ms"))
		testkit.Eventually(t, func() bool {
			return metric(t, reg, "spillway_forward_retries_total", "reason", "misconfigured") >= 2
		}, "no misconfigured retries")
		// A Group on the same spool is the next step; this one must stop
		// first, and its status be read before.
	})
	t.Run("the events wait in the spool, not dead-lettered", func(t *testing.T) {
		sp := openSpool(t, dir, "dest")
		if b := sp.Backlog("dest"); b.Events != int64(len(evs)) {
			t.Fatalf("backlog %d, want %d", b.Events, len(evs))
		}
		if dls := deadLetters(t, sp, ""); len(dls) != 0 {
			t.Fatalf("%d dead letters", len(dls))
		}
		if got := srv.Requests(); len(got) != 0 {
			t.Fatalf("an untrusted destination received %v", got)
		}
	})
	t.Run("with tls_ca it is delivered", func(t *testing.T) {
		sp := openSpool(t, dir, "dest")
		startGroup(t, sp, nil, "dest="+srv.URL+"/hook?"+opts(testOpts, "tls_ca="+caFile))
		testkit.Eventually(t, func() bool { return sp.Backlog("dest").Events == 0 }, "not delivered")
		if got := srv.Delivered(); len(got) != len(evs) {
			t.Fatalf("received %d events, want %d", len(got), len(evs))
		}
	})
	t.Run("with insecure=true it is delivered, unverified", func(t *testing.T) {
		sp := openSpool(t, t.TempDir(), "dest")
		appendEvents(t, sp, numbered(3)...)
		startGroup(t, sp, nil, "dest="+srv.URL+"/hook?"+opts(testOpts, "insecure=true"))
		testkit.Eventually(t, func() bool { return sp.Backlog("dest").Events == 0 }, "not delivered")
	})
}

func TestMisconfiguredTLSStatus(t *testing.T) {
	srv, _ := selfSigned(t)
	sp := openSpool(t, t.TempDir(), "dest")
	appendEvents(t, sp, numbered(2)...)
	g := startGroup(t, sp, nil, "dest=segment+"+srv.URL+"?"+opts(testOpts, "backoff_max=100ms"))
	testkit.Eventually(t, func() bool { return g.Status()[0].State == StateMisconfigured }, "not reported misconfigured")
	if st := g.Status()[0]; !strings.Contains(st.LastError, "certificate") || !strings.Contains(st.LastError, "tls_ca") {
		t.Errorf("last error %q, want it to name the certificate and tls_ca", st.LastError)
	}
}

func TestTLSParams(t *testing.T) {
	_, ca := selfSigned(t)
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "missing.pem")
	for _, tt := range []struct {
		spec   string
		errHas string // "" parses
	}{
		{"d=https://h/x?tls_ca=" + ca, ""},
		{"d=segment+https://h?insecure=true", ""},
		{"d=https://h/x?insecure=false", ""},
		{"d=http://h/x?tls_ca=" + ca, "need an https URL"},
		{"d=segment+http://h?insecure=true", "need an https URL"},
		{"d=https://h/x?tls_ca=" + ca + "&insecure=true", "exclude each other"},
		{"d=https://h/x?insecure=maybe", "want true or false"},
		{"d=https://h/x?tls_ca=", "must name a PEM file"},
		{"d=stdout://?tls_ca=" + ca, "only an https or segment+https destination"},
		// Found when parsing, so that spillway exits 2 naming the
		// destination and the parameter, as for any bad URL.
		{"d=https://h/x?tls_ca=" + missing, "destination d: tls_ca: open " + missing + ": no such file"},
		{"d=segment+https://h?tls_ca=" + notPEM, "destination d: tls_ca: " + notPEM + " holds no PEM certificate"},
	} {
		d, err := ParseDestination(tt.spec, Defaults{})
		switch {
		case tt.errHas == "" && err != nil:
			t.Errorf("%s: %v", tt.spec, err)
		case tt.errHas != "" && (err == nil || !strings.Contains(err.Error(), tt.errHas)):
			t.Errorf("%s: %v, want an error with %q", tt.spec, err, tt.errHas)
		case tt.errHas == "" && (strings.Contains(d.URL, "tls_ca") || strings.Contains(d.URL, "insecure")):
			t.Errorf("%s: the endpoint's URL kept spillway's parameter: %s", tt.spec, d.URL)
		}
	}
	// A destination built by hand is refused when its forwarder is built.
	d, err := ParseDestination("d=https://127.0.0.1/x?tls_ca="+ca, Defaults{})
	if err != nil {
		t.Fatal(err)
	}
	d.TLSCA = notPEM
	if _, err := newForwarder(d); err == nil || !strings.Contains(err.Error(), "holds no PEM certificate") {
		t.Errorf("a tls_ca that is not PEM: %v, want a start-up error", err)
	}
	d.TLSCA = missing
	if _, err := newForwarder(d); err == nil || !strings.Contains(err.Error(), "tls_ca: open") {
		t.Errorf("a missing tls_ca: %v, want a start-up error", err)
	}
}
