package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"strconv"
)

// Attribute keys, constant so that log queries can rely on them.
const (
	logKeyComponent = "component"
	logKeyEndpoint  = "endpoint"
	logKeyErr       = "err"
	logKeyPath      = "path"
	logKeyPanic     = "panic"
	logKeyStack     = "stack"
	logKeyAction    = "action"
	logKeyCount     = "count"
)

// fasthttpLogger sends fasthttp's own messages (connection errors, mostly
// caused by clients) to slog at Debug.
type fasthttpLogger struct{ log *slog.Logger }

func (l fasthttpLogger) Printf(format string, args ...any) {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.log.LogAttrs(context.Background(), slog.LevelDebug, redactQuoted(fmt.Sprintf(format, args...)))
	}
}

// quotedRE matches a Go-quoted string, as fasthttp quotes what it read.
var quotedRE = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)

// redactQuoted replaces every quoted string of a fasthttp message but
// addresses with "…": even with SecureErrorLogMessage, fasthttp quotes the
// request line or headers it failed to parse, which may hold a write key.
func redactQuoted(msg string) string {
	return quotedRE.ReplaceAllStringFunc(msg, func(q string) string {
		if s, err := strconv.Unquote(q); err == nil {
			if _, port, err := net.SplitHostPort(s); err == nil {
				if _, err := strconv.Atoi(port); err == nil {
					return q
				}
			}
		}
		return `"…"`
	})
}
