package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/dustin/go-humanize"

	"github.com/spillwayhq/spillway/forwarders"
	"github.com/spillwayhq/spillway/spool"
)

// byteSize is a flag.Value taking sizes such as 32KiB, 500KB or 1GiB.
type byteSize int64

var _ flag.Value = (*byteSize)(nil)

// String writes a size in the units it was most likely given in: the
// default --batch-max-bytes is Segment's 500 KB, not 488 KiB.
func (b *byteSize) String() string {
	if n := uint64(*b); n%1000 == 0 && n%1024 != 0 {
		return humanize.Bytes(n)
	}
	return humanize.IBytes(uint64(*b))
}

func (b *byteSize) Set(s string) error {
	n, err := forwarders.ParseByteSize(s)
	if err != nil {
		return err
	}
	*b = byteSize(n)
	return nil
}

// stringList is a repeatable flag. From the environment, its values are
// separated by white space, so a multi-line YAML value lists one per line.
type stringList []string

var _ flag.Value = (*stringList)(nil)

func (l *stringList) String() string { return strings.Join(*l, " ") }

func (l *stringList) Set(s string) error {
	*l = append(*l, s)
	return nil
}

// envPrefix is where every flag is also read from: --spool-max-bytes is
// SPILLWAY_SPOOL_MAX_BYTES. A flag given on the command line wins.
const envPrefix = "SPILLWAY_"

func envName(flagName string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseFlags parses args, then fills every flag not given on the command
// line from its environment variable.
func parseFlags(fs *flag.FlagSet, args []string) error {
	return parseFlagsAndEnv(fs, args, func(string) bool { return true })
}

// parseClientFlags is parseFlags for the commands that talk to a server
// (status, tail, dlq). They run where the server's environment is set
// (docker exec, kubectl exec into the sidecar), and there a variable named
// after a server flag, SPILLWAY_SPOOL_DIR or SPILLWAY_DESTINATION, is the
// server's setting, never the command's: such flags are read from the
// command line only.
func parseClientFlags(fs *flag.FlagSet, args []string) error {
	server, _ := serverFlags(io.Discard)
	return parseFlagsAndEnv(fs, args, func(name string) bool { return server.Lookup(name) == nil })
}

// parseFlagsAndEnv parses args, then fills each flag not given on the
// command line for which fromEnv holds from its environment variable.
func parseFlagsAndEnv(fs *flag.FlagSet, args []string, fromEnv func(flagName string) bool) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || !fromEnv(f.Name) {
			return
		}
		v, ok := os.LookupEnv(envName(f.Name))
		if !ok {
			return
		}
		values := []string{v}
		if _, repeatable := f.Value.(*stringList); repeatable {
			values = strings.Fields(v)
		}
		for _, v := range values {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("invalid value %q for %s (--%s): %v", v, envName(f.Name), f.Name, err))
			}
		}
	})
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

// checkAddr reports whether addr is a HOST:PORT that net.Listen could take,
// without binding it: a typo is a usage error, found before the spool is
// opened, while a port already in use is only known when binding. HOST may
// be empty (every interface), an IP address or a host name; PORT a number
// or a service name.
func checkAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			err = errors.New(ae.Err) // the address itself is named by the caller
		}
		return fmt.Errorf("want HOST:PORT such as 127.0.0.1:8080: %v", err)
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		return fmt.Errorf("port %q is not a number in 0..65535 or a known service", port)
	}
	if host == "" {
		return nil
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if !isHostName(host) {
		return fmt.Errorf("host %q is neither an IP address nor a host name", host)
	}
	return nil
}

// isHostName checks the syntax of a DNS name, as the resolver would take
// it (underscores included), so that only names that may resolve reach
// net.Listen.
func isHostName(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

// dedupeFlags registers the messageId de-duplication flags.
func dedupeFlags(fs *flag.FlagSet, c *serverConfig) {
	c.spool.DedupeWindow = spool.DefaultDedupeWindow
	c.spool.DedupeMaxBytes = spool.DefaultDedupeMaxBytes
	fs.DurationVar(&c.spool.DedupeWindow, "dedupe-window", c.spool.DedupeWindow, "an event whose write key and client messageId were stored this recently is not stored again (answered 200, counted); 0 turns de-duplication off")
	fs.Var((*byteSize)(&c.spool.DedupeMaxBytes), "dedupe-max-bytes", "bound on the messageId index on disk, at least 64KiB: past it the oldest entries go and the window held shrinks")
}
