package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spillwayhq/spillway/internal/testkit"
)

// runBinary runs the built spillway with args, plus env in its
// environment, and returns its exit status and stderr. A server that
// starts when it should have refused its flags is killed after
// testkit.Patience, and the test fails rather than hangs.
func runBinary(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testkit.Patience)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("spillway %s still running after %v: %s", strings.Join(args, " "), testkit.Patience, stderr.String())
	}
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), stderr.String()
}

// TestMeaninglessValuesExitTwoNamingTheFlag: the packages read a zero as
// "the default", so --concurrency 0 used to start with 4 and --max-age 0
// with 4h while -1 was refused. Every such value is now refused before
// anything is created, as is a spool bound below what the spool itself
// takes, and a listen address that is not HOST:PORT.
func TestMeaninglessValuesExitTwoNamingTheFlag(t *testing.T) {
	cases := map[string]struct {
		args []string
		want string
	}{
		"no events per delivery":               {[]string{"--batch-max-events", "0"}, "--batch-max-events"},
		"no bytes per delivery":                {[]string{"--batch-max-bytes", "0"}, "--batch-max-bytes"},
		"a zero flush interval":                {[]string{"--flush-interval", "0"}, "--flush-interval"},
		"a negative flush interval":            {[]string{"--flush-interval", "-1s"}, "--flush-interval"},
		"no delivery in flight":                {[]string{"--concurrency", "0"}, "--concurrency"},
		"a zero request timeout":               {[]string{"--request-timeout", "0"}, "--request-timeout"},
		"a zero first retry delay":             {[]string{"--backoff-min", "0"}, "--backoff-min"},
		"a zero longest retry delay":           {[]string{"--backoff-max", "0"}, "--backoff-max"},
		"a zero max age":                       {[]string{"--max-age", "0"}, "--max-age"},
		"a zero fsync period":                  {[]string{"--sync", "interval", "--sync-interval", "0"}, "--sync-interval"},
		"no connection at all":                 {[]string{"--max-conns", "0"}, "--max-conns"},
		"a spool bound of ten bytes":           {[]string{"--spool-max-bytes", "10"}, "--spool-max-bytes"},
		"a spool bound below the floor":        {[]string{"--spool-max-bytes", "3MiB"}, "--spool-max-bytes"},
		"a zero from the environment":          {[]string{"env:SPILLWAY_MAX_AGE=0s"}, "--max-age"},
		"a listen address without a port":      {[]string{"--listen", "notanaddr"}, "--listen"},
		"a listen port out of range":           {[]string{"--listen", "127.0.0.1:99999"}, "--listen"},
		"a listen host that cannot be a name":  {[]string{"--listen", "local host:8080"}, "--listen"},
		"an admin address without a port":      {[]string{"--admin-listen", "127.0.0.1"}, "--admin-listen"},
		"a pprof address with an unknown port": {[]string{"--pprof-listen", "127.0.0.1:nosuchservice"}, "--pprof-listen"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			wantUsageErrorBeforeTheSpool(t, c.args, c.want)
		})
	}
}

// wantUsageErrorBeforeTheSpool runs spillway run with args (those written
// "env:NAME=VALUE" go to its environment instead) and fails unless it
// exits 2 naming want, without having created its spool.
func wantUsageErrorBeforeTheSpool(t *testing.T, args []string, want string) {
	t.Helper()
	spoolDir := filepath.Join(t.TempDir(), "spool")
	cmd := []string{"run", "--listen", freeAddr(t), "--spool-dir", spoolDir}
	var env []string
	for _, a := range args {
		if kv, ok := strings.CutPrefix(a, "env:"); ok {
			env = append(env, kv)
		} else {
			cmd = append(cmd, a)
		}
	}
	code, stderr := runBinary(t, env, cmd...)
	if code != 2 || !strings.Contains(stderr, want) {
		t.Fatalf("exit %d, stderr %q; want 2 naming %s", code, stderr, want)
	}
	if _, err := os.Stat(spoolDir); err == nil {
		t.Errorf("a refused configuration created the spool %s", spoolDir)
	}
}

// TestUnusableSecretsExitTwoBeforeTheSpoolOpens: the files and variables
// that hold secrets are read with the flags. They used to be read after
// the spool had opened, so a missing certificate exited 1 having created
// the spool, where README promises a usage error before anything opens.
func TestUnusableSecretsExitTwoBeforeTheSpoolOpens(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	spaced, empty := write("spaced-keys", "a b\n"), write("no-keys", "# none yet\n")
	notPEM := write("not-pem", "not a certificate\n")
	missing := filepath.Join(dir, "missing")
	cases := map[string]struct {
		args []string
		want string
	}{
		"a missing certificate":           {[]string{"--tls-cert", missing, "--tls-key", missing}, "--tls-cert"},
		"a certificate that is not PEM":   {[]string{"--tls-cert", notPEM, "--tls-key", notPEM}, "--tls-cert"},
		"a missing write-key file":        {[]string{"--write-key-file", missing}, "--write-key-file"},
		"a write key with a space inside": {[]string{"--write-key-file", spaced}, "--write-key-file"},
		"a write-key file without keys":   {[]string{"--write-key-file", empty}, "--write-key-file"},
		"kafka SASL without a password": {[]string{"env:SPILLWAY_KAFKA_PASSWORD=",
			"--destination", "k=kafka://127.0.0.1:9092/events?sasl=scram-sha-256&user=u"}, "SPILLWAY_KAFKA_PASSWORD"},
		"kafka SASL with an empty named variable": {[]string{"env:SPILLWAY_TEST_EMPTY=",
			"--destination", "k=kafka://127.0.0.1:9092/events?sasl=plain&user=u&password_env=SPILLWAY_TEST_EMPTY"}, "SPILLWAY_TEST_EMPTY"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			wantUsageErrorBeforeTheSpool(t, c.args, c.want)
		})
	}
}

// TestSpoolMaxBytesZeroMeansNoBound: the one zero with a meaning.
func TestSpoolMaxBytesZeroMeansNoBound(t *testing.T) {
	for _, size := range []string{"0", "4MiB"} {
		p := startSpillway(t, "", nil, "--spool-dir", t.TempDir(), "--spool-max-bytes", size)
		if code := p.stop(); code != 0 {
			t.Fatalf("--spool-max-bytes %s: exit %d: %s", size, code, p.stderr)
		}
	}
}

// TestABusyPortIsARuntimeError: a well-formed address is only known to be
// unusable when binding it, after the flags were accepted: exit 1, not the
// usage error's 2.
func TestABusyPortIsARuntimeError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, flag := range []string{"--listen", "--admin-listen", "--pprof-listen"} {
		args := []string{"run", "--spool-dir", t.TempDir(), "--listen", freeAddr(t), flag, ln.Addr().String()}
		code, stderr := runBinary(t, nil, args...)
		if code != 1 || !strings.Contains(stderr, flag+" "+ln.Addr().String()) || !strings.Contains(stderr, "address already in use") {
			t.Errorf("%s on a busy port: exit %d, stderr %q; want 1 naming the flag", flag, code, stderr)
		}
	}
}
