package proxy

import (
	_ "embed"

	"github.com/valyala/fasthttp"
)

// uiPage is the live view served at GET /ui: one self-contained page
// (inline CSS and JS, no CDN, works offline) that polls /admin/status and
// /admin/events once a second.
//
//go:embed ui.html
var uiPage []byte

// uiCSP lets the page run its own inline code and talk to this server
// only, so nothing is fetched from elsewhere even by mistake.
const uiCSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; " +
	"connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// handleUI serves the page. It holds no data; what it shows comes from the
// admin API under that API's access rules (events need a loopback client
// or the admin token, which the page asks for when refused).
func (s *Server) handleUI(ctx *fasthttp.RequestCtx) {
	if !onlyGet(ctx) {
		return
	}
	h := &ctx.Response.Header
	h.Set(fasthttp.HeaderContentSecurityPolicy, uiCSP)
	h.Set(fasthttp.HeaderCacheControl, "no-store")
	h.Set(fasthttp.HeaderXContentTypeOptions, "nosniff")
	h.Set(fasthttp.HeaderReferrerPolicy, "no-referrer")
	ctx.SetContentType("text/html; charset=utf-8")
	ctx.SetBody(uiPage)
}
