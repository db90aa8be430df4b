// Sends one of each call @segment/analytics-node has to a spillway, set up
// as spillway's README says, and exits non-zero unless the SDK reports every
// event delivered.
//
//   node send.mjs URL WRITE_KEY RUN_ID
//
// Each delivered event is printed to stdout as the SDK sent it, one JSON
// object a line, so that the caller knows the messageIds the SDK chose.
// Each request the SDK makes is logged to stderr. SDK_MAX_RETRIES, when set,
// overrides the SDK's maxRetries, SDK_HTTP_TIMEOUT_MS its
// httpRequestTimeout. SDK_BIG_EVENT_BYTES, when set, adds a
// track "Big Event" after the first of the others whose properties.blob
// holds that many characters.
import { Analytics } from '@segment/analytics-node'

const [url, writeKey, run] = process.argv.slice(2)
if (!url || !writeKey || !run) {
  console.error('usage: node send.mjs URL WRITE_KEY RUN_ID')
  process.exit(2)
}

const settings = { writeKey, host: url }
if (process.env.SDK_MAX_RETRIES) {
  settings.maxRetries = Number(process.env.SDK_MAX_RETRIES)
}
if (process.env.SDK_HTTP_TIMEOUT_MS) {
  settings.httpRequestTimeout = Number(process.env.SDK_HTTP_TIMEOUT_MS)
}
const analytics = new Analytics(settings)

let failures = 0
analytics.on('error', (err) => {
  failures++
  console.error(`error: ${err.code}: ${err.reason?.message ?? err.reason}`)
})
analytics.on('http_request', (req) => console.error(`request: ${req.method} ${req.url}`))

const user = `node-user-${run}`
const anon = `node-anon-${run}`
let sent = 0
let delivered = 0
const done = (err, ctx) => {
  if (!err) {
    delivered++
    console.log(JSON.stringify(ctx.event))
  }
}
const send = (call, params) => {
  sent++
  analytics[call](params, done)
}

send('track', {
  userId: user,
  event: 'Order Completed',
  properties: { orderId: `order-${run}`, revenue: 42.5, currency: 'EUR', products: [{ sku: 'sku-1', quantity: 2 }] },
})
if (process.env.SDK_BIG_EVENT_BYTES) {
  send('track', { userId: user, event: 'Big Event', properties: { blob: 'x'.repeat(Number(process.env.SDK_BIG_EVENT_BYTES)) } })
}
send('track', { anonymousId: anon, event: 'Product Viewed', properties: { sku: 'sku-1' } })
send('identify', { userId: user, anonymousId: anon, traits: { email: `${run}@example.com`, plan: 'pro', logins: 3 } })
send('page', { anonymousId: anon, category: 'Docs', name: 'Pricing', properties: { path: '/pricing' } })
send('screen', { userId: user, name: 'Home', properties: { variant: 'b' } })
send('group', { userId: user, groupId: `group-${run}`, traits: { name: 'Acme', employees: 120 } })
send('alias', { userId: user, previousId: anon })

await analytics.closeAndFlush()
if (failures > 0 || delivered !== sent) {
  console.error(`${delivered} of ${sent} events delivered, ${failures} errors`)
  process.exit(1)
}
