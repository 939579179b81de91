// The peers of bench-policy: the same rules and requests (written by
// `bench-policy --emit FILE`) decided by Cedar (@cedar-policy/cedar-wasm, the
// policy set preparsed once) and by cel-js (@marcbachmann/cel-js, each CEL
// expression parsed once, rules tried in Cloister's order: priority, deny
// first, first match decides, errors deny). Prints one JSON line per engine.
//
//   node peers.mjs FILE [SECONDS]
import {readFileSync} from 'node:fs'
import {Environment} from '@marcbachmann/cel-js'
import * as cedar from '@cedar-policy/cedar-wasm/nodejs'

const [file, secondsArg] = process.argv.slice(2)
const seconds = Number(secondsArg || 2)
const {rules, requests} = JSON.parse(readFileSync(file, 'utf8'))
const policies = new Set(rules.map(r => r.policy)).size

// IPv4 networks, as CEL's network extension has them (IPv6 is not generated)
function ipv4(s) {
  const parts = s.split('.')
  if (parts.length !== 4) throw new Error(`bad IPv4 address ${s}`)
  return parts.reduce((a, p) => (a * 256) + Number(p), 0)
}
class Cidr {
  constructor(s) {
    const [addr, len] = s.split('/')
    this.bits = Number(len)
    this.net = this.bits === 0 ? 0 : (ipv4(addr) >>> (32 - this.bits))
  }
  contains(ip) {
    return this.bits === 0 || (ipv4(ip) >>> (32 - this.bits)) === this.net
  }
}

function measure(engine, decide) {
  for (const q of requests) decide(q) // warm up
  const lat = []
  let allowed = 0
  const start = process.hrtime.bigint()
  const deadline = start + BigInt(Math.round(seconds * 1e9))
  for (let i = 0; ; i++) {
    const q = requests[i % requests.length]
    const a = process.hrtime.bigint()
    allowed += decide(q) ? 1 : 0
    const b = process.hrtime.bigint()
    lat.push(Number(b - a))
    if (b >= deadline) break
  }
  const elapsed = Number(process.hrtime.bigint() - start) / 1e9
  lat.sort((x, y) => x - y)
  console.log(JSON.stringify({
    engine, policies, rules: rules.length, decisions: lat.length, per_sec: Math.round(lat.length / elapsed),
    median_ns: lat[lat.length >> 1], p99_ns: lat[Math.floor(lat.length * 0.99)],
    allowed_pct: Math.round(1000 * allowed / lat.length) / 10,
  }))
}

// ---- cel-js: the same expressions, in decision order ----
const env = new Environment({unlistedVariablesAreDyn: true})
  .registerType('CIDR', {ctor: Cidr})
  .registerFunction('cidr(string): CIDR', s => new Cidr(s))
  .registerFunction('CIDR.containsIP(string): bool', (c, ip) => c.contains(ip))
const ordered = rules.map((r, i) => ({...r, i}))
  .sort((a, b) => a.priority - b.priority || (a.effect === 'deny' ? 0 : 1) - (b.effect === 'deny' ? 0 : 1) ||
    (a.policy < b.policy ? -1 : a.policy > b.policy ? 1 : 0) || a.i - b.i)
  .map(r => ({allow: r.effect === 'allow', fn: env.parse(r.cel)}))
const celCtx = requests.map(q => ({ctx: {
  user: {name: q.user, groups: q.groups},
  service: {name: 'app'},
  request: {ip: q.ip, http: {method: q.method, path: q.path, headers: {'x-team': q.team}}},
}}))
requests.forEach((q, i) => { q.cel = celCtx[i] })
measure('cel-js', q => {
  for (const r of ordered) {
    let v
    try {
      v = r.fn(q.cel)
    } catch {
      return false
    }
    if (v === true) return r.allow
  }
  return false
})

// ---- Cedar: permit/forbid with the same conditions, preparsed ----
const text = rules.map(r =>
  `@id("${r.policy}.${r.name}")\n${r.effect === 'deny' ? 'forbid' : 'permit'}(principal, action, resource) when { ${r.cedar} };`
).join('\n')
const parsed = cedar.preparsePolicySet('bench', {staticPolicies: text})
if (parsed.type !== 'success') throw new Error(JSON.stringify(parsed.errors))
measure('cedar', q => {
  const answer = cedar.statefulIsAuthorized({
    principal: {type: 'User', id: q.user},
    action: {type: 'Action', id: 'access'},
    resource: {type: 'Service', id: 'app'},
    context: {groups: q.groups, method: q.method, path: q.path, team: q.team, ip: {__extn: {fn: 'ip', arg: q.ip}}},
    preparsedPolicySetId: 'bench',
    entities: [],
  })
  return answer.type === 'success' && answer.response.decision === 'allow'
})
