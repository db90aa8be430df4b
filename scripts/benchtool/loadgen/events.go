package main

import (
	"encoding/hex"
	"math/rand/v2"
	"strconv"
	"time"
)

// Event content: realistic analytics.js track events, about 750 bytes each.
// Users, products and pages come from bounded catalogues (as in real
// traffic, where the same user sends many events); ids, timestamps, prices
// and cart/order ids vary per event; messageIds are unique per event and per
// request (see counterWidth).

// counterWidth is the number of decimal digits patched into every messageId
// on every request, so that resending a pooled body never repeats an id.
const counterWidth = 12

var (
	eventNames = []string{
		"Product Viewed", "Product Added", "Product Removed", "Cart Viewed",
		"Checkout Started", "Payment Info Entered", "Order Completed",
		"Product Clicked", "Products Searched", "Coupon Applied",
		"Product Added to Wishlist", "Promotion Viewed",
	}
	cartEvents = map[string]bool{
		"Product Added": true, "Product Removed": true, "Cart Viewed": true,
		"Checkout Started": true, "Payment Info Entered": true, "Order Completed": true,
		"Coupon Applied": true,
	}
	adjectives = []string{
		"Classic", "Slim", "Vintage", "Organic", "Premium", "Lightweight",
		"Relaxed", "Waterproof", "Everyday", "Recycled", "Merino", "Quilted",
		"Cropped", "Oversized", "Essential", "Heritage",
	}
	colors = []string{
		"Navy", "Black", "Olive", "Sand", "Burgundy", "Heather Grey", "Ivory",
		"Rust", "Teal", "Charcoal", "Mustard", "Sky Blue",
	}
	nouns = []string{
		"Cotton Shirt", "Denim Jacket", "Running Shoe", "Wool Sweater",
		"Canvas Tote", "Chino Pant", "Rain Shell", "Leather Belt", "Hoodie",
		"Linen Dress", "Trail Sneaker", "Beanie", "Backpack", "Polo",
		"Cargo Short", "Parka",
	}
	categories = []string{
		"Apparel/Tops", "Apparel/Outerwear", "Footwear", "Accessories/Bags",
		"Apparel/Bottoms", "Accessories/Hats", "Sale", "New Arrivals",
	}
	brands     = []string{"Northwind", "Fabrikam", "Contoso", "Tailspin", "Litware", "Adatum"}
	currencies = []string{"USD", "USD", "USD", "EUR", "GBP", "CAD"}
	locales    = []string{"en-US", "en-US", "en-GB", "de-DE", "fr-FR", "es-ES", "en-CA", "nl-NL"}
	referrers  = []string{
		"https://www.google.com/", "https://www.bing.com/", "https://duckduckgo.com/",
		"https://www.facebook.com/", "https://t.co/", "https://www.instagram.com/",
		"", "https://news.ycombinator.com/",
	}
	userAgents = []string{
		"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
		"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
		"Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
		"Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.6478.71 Mobile Safari/537.36",
		"Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
		"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.0.0 Safari/537.36 Edg/125.0.2535.92",
		"Mozilla/5.0 (iPad; CPU OS 16_7 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/126.0.6478.54 Mobile/15E148 Safari/604.1",
		"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
	}
	libVersions = []string{"next-1.70.0", "next-1.71.1", "next-1.72.0", "next-1.73.0"}
	campaigns   = []string{"summer_sale", "newsletter_w27", "retargeting", "brand_search", "influencer_q3"}
)

const (
	numUsers    = 20000
	numProducts = 4000
)

type user struct {
	userID    string // empty: anonymous
	anonID    string
	ip        string
	ua        string
	locale    string
	libVer    string
	sessionTS time.Time
}

type product struct {
	id, sku, name, category, brand, variant, slug string
	price                                         int // cents
}

// generator builds events from a seeded source; it is not safe for
// concurrent use.
type generator struct {
	r        *rand.Rand
	users    []user
	products []product
	base     time.Time
}

func newGenerator(seed uint64) *generator {
	g := &generator{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	g.base = time.Date(2025, 6, 2, 8, 0, 0, 0, time.UTC).Add(time.Duration(g.r.IntN(86400)) * time.Second)
	g.users = make([]user, numUsers)
	for i := range g.users {
		u := &g.users[i]
		u.anonID = g.uuid()
		if g.r.IntN(10) < 7 {
			u.userID = "usr_" + strconv.Itoa(1000000+g.r.IntN(9000000))
		}
		u.ip = strconv.Itoa(g.r.IntN(223)+1) + "." + strconv.Itoa(g.r.IntN(256)) + "." +
			strconv.Itoa(g.r.IntN(256)) + "." + strconv.Itoa(g.r.IntN(254)+1)
		u.ua = pick(g.r, userAgents)
		u.locale = pick(g.r, locales)
		u.libVer = pick(g.r, libVersions)
		u.sessionTS = g.base.Add(time.Duration(g.r.IntN(6*3600)) * time.Second)
	}
	g.products = make([]product, numProducts)
	for i := range g.products {
		p := &g.products[i]
		p.name = pick(g.r, adjectives) + " " + pick(g.r, colors) + " " + pick(g.r, nouns)
		p.id = "prod_" + g.hex(8)
		p.sku = "SKU-" + strconv.Itoa(10000+g.r.IntN(89999)) + "-" + string(rune('A'+g.r.IntN(26)))
		p.category = pick(g.r, categories)
		p.brand = pick(g.r, brands)
		p.variant = []string{"XS", "S", "M", "L", "XL", "8", "9", "10", "11", "One Size"}[g.r.IntN(10)]
		p.price = 499 + g.r.IntN(25000)
		p.slug = slugify(p.name) + "-" + strconv.Itoa(g.r.IntN(1000))
	}
	return g
}

func pick[T any](r *rand.Rand, s []T) T { return s[r.IntN(len(s))] }

func (g *generator) hex(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(g.r.Uint32())
	}
	return hex.EncodeToString(b)
}

func (g *generator) uuid() string {
	h := g.hex(16)
	return h[0:8] + "-" + h[8:12] + "-4" + h[13:16] + "-a" + h[17:20] + "-" + h[20:32]
}

func slugify(s string) string {
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'A' && c <= 'Z':
			b = append(b, c+'a'-'A')
		case c == ' ':
			b = append(b, '-')
		default:
			b = append(b, c)
		}
	}
	return string(b)
}

// appendEvent appends one track event and returns the buffer and the offset
// of the messageId's counter digits (counterWidth zeros) within it.
func (g *generator) appendEvent(b []byte) ([]byte, int) {
	r := g.r
	u := &g.users[r.IntN(len(g.users))]
	p := &g.products[r.IntN(len(g.products))]
	name := pick(r, eventNames)
	ts := u.sessionTS.Add(time.Duration(r.IntN(3600_000)) * time.Millisecond)
	qty := 1 + r.IntN(4)
	cur := pick(r, currencies)

	b = append(b, `{"type":"track","event":"`...)
	b = append(b, name...)
	b = append(b, `","messageId":"ajs-next-`...)
	b = append(b, g.hex(10)...)
	b = append(b, '-')
	off := len(b)
	for range counterWidth {
		b = append(b, '0')
	}
	b = append(b, `","anonymousId":"`...)
	b = append(b, u.anonID...)
	if u.userID != "" {
		b = append(b, `","userId":"`...)
		b = append(b, u.userID...)
	}
	b = append(b, `","timestamp":"`...)
	b = ts.AppendFormat(b, "2006-01-02T15:04:05.000Z")
	b = append(b, `","properties":{"product_id":"`...)
	b = append(b, p.id...)
	b = append(b, `","name":"`...)
	b = append(b, p.name...)
	if r.IntN(2) == 0 {
		b = append(b, `","category":"`...)
		b = append(b, p.category...)
	}
	b = append(b, `","price":`...)
	price := p.price
	if r.IntN(5) == 0 { // a discount now and then
		price = price * (70 + r.IntN(25)) / 100
	}
	b = strconv.AppendInt(b, int64(price/100), 10)
	b = append(b, '.')
	b = append(b, byte('0'+price%100/10), byte('0'+price%10))
	b = append(b, `,"quantity":`...)
	b = strconv.AppendInt(b, int64(qty), 10)
	b = append(b, `,"currency":"`...)
	b = append(b, cur...)
	b = append(b, '"')
	if cartEvents[name] {
		b = append(b, `,"cart_id":"`...)
		b = append(b, g.hex(8)...)
		b = append(b, '"')
	}
	if name == "Order Completed" {
		b = append(b, `,"order_id":"`...)
		b = append(b, g.hex(6)...)
		b = append(b, `","coupon":"`...)
		b = append(b, []string{"SUMMER10", "WELCOME15", "FREESHIP", ""}[r.IntN(4)]...)
		b = append(b, '"')
	}
	b = append(b, `},"context":{"library":{"name":"analytics.js","version":"`...)
	b = append(b, u.libVer...)
	b = append(b, `"},"page":{"path":"/p/`...)
	b = append(b, p.slug...)
	b = append(b, `","referrer":"`...)
	b = append(b, pick(r, referrers)...)
	if r.IntN(3) == 0 {
		b = append(b, `","search":"?utm_source=email&utm_campaign=`...)
		b = append(b, pick(r, campaigns)...)
	}
	b = append(b, `","url":"https://shop.example.com/p/`...)
	b = append(b, p.slug...)
	b = append(b, `"},"userAgent":"`...)
	b = append(b, u.ua...)
	b = append(b, `","ip":"`...)
	b = append(b, u.ip...)
	b = append(b, `","locale":"`...)
	b = append(b, u.locale...)
	b = append(b, `"}}`...)
	return b, off
}

// body is one pooled request body and where its messageId counters are.
type body struct {
	data     []byte
	counters []int
	events   int
	rawBytes int // sum of the events' JSON lengths
}

// buildPool pre-generates nbodies bodies of perBody events each; perBody 0
// means /v1/track bodies (one bare event).
func buildPool(seed uint64, nbodies, perBody int) []body {
	g := newGenerator(seed)
	pool := make([]body, nbodies)
	for i := range pool {
		bd := &pool[i]
		var b []byte
		if perBody == 0 {
			b = make([]byte, 0, 1024)
			var off int
			b, off = g.appendEvent(b)
			bd.counters = []int{off}
			bd.events, bd.rawBytes = 1, len(b)
		} else {
			b = make([]byte, 0, perBody*800+64)
			b = append(b, `{"batch":[`...)
			for j := range perBody {
				if j > 0 {
					b = append(b, ',')
				}
				start := len(b)
				var off int
				b, off = g.appendEvent(b)
				bd.counters = append(bd.counters, off)
				bd.rawBytes += len(b) - start
			}
			b = append(b, `],"sentAt":"`...)
			b = g.base.Add(time.Duration(g.r.IntN(86400_000))*time.Millisecond).AppendFormat(b, "2006-01-02T15:04:05.000Z")
			b = append(b, `"}`...)
			bd.events = perBody
		}
		bd.data = b
	}
	return pool
}

// patchCounters writes id, id+1, ... into the body's messageId counters, so
// each event of each request has a messageId no other event has.
func patchCounters(b []byte, offs []int, id uint64) {
	for _, off := range offs {
		v := id
		for k := off + counterWidth - 1; k >= off; k-- {
			b[k] = byte('0' + v%10)
			v /= 10
		}
		id++
	}
}
