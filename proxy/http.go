package proxy

import "github.com/valyala/fasthttp"

// onlyGet answers 405 unless the request is a GET or HEAD.
func onlyGet(ctx *fasthttp.RequestCtx) bool {
	if ctx.IsGet() || ctx.IsHead() {
		return true
	}
	ctx.Response.Header.Set(fasthttp.HeaderAllow, "GET, HEAD")
	writeError(ctx, errMethodNotAllowed)
	return false
}

// onlyPost answers 405 unless the request is a POST.
func onlyPost(ctx *fasthttp.RequestCtx) bool {
	if ctx.IsPost() {
		return true
	}
	ctx.Response.Header.Set(fasthttp.HeaderAllow, "POST")
	writeError(ctx, errMethodNotAllowed)
	return false
}

// setCORS lets browsers (analytics.js) read our answers. Segment's API
// echoes the Origin with credentials allowed; so do we.
func setCORS(ctx *fasthttp.RequestCtx) {
	h := &ctx.Response.Header
	if origin := ctx.Request.Header.Peek(fasthttp.HeaderOrigin); len(origin) > 0 {
		h.SetBytesV(fasthttp.HeaderAccessControlAllowOrigin, origin)
		h.Set(fasthttp.HeaderAccessControlAllowCredentials, "true")
		h.Set(fasthttp.HeaderVary, fasthttp.HeaderOrigin)
	} else {
		h.Set(fasthttp.HeaderAccessControlAllowOrigin, "*")
	}
}

func preflight(ctx *fasthttp.RequestCtx) {
	h := &ctx.Response.Header
	h.Set(fasthttp.HeaderAccessControlAllowMethods, "POST, OPTIONS")
	if req := ctx.Request.Header.Peek(fasthttp.HeaderAccessControlRequestHeaders); len(req) > 0 {
		h.SetBytesV(fasthttp.HeaderAccessControlAllowHeaders, req)
	} else {
		h.Set(fasthttp.HeaderAccessControlAllowHeaders, "Authorization, Content-Type, Content-Encoding")
	}
	h.Set(fasthttp.HeaderAccessControlMaxAge, "86400")
	ctx.SetStatusCode(fasthttp.StatusNoContent)
}
