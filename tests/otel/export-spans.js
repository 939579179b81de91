// Posts spans made with the OpenTelemetry JavaScript SDK through its
// OTLP/HTTP JSON exporter (the reference encoder) to the receiver at
// argv[2] (a base URL: /v1/traces is appended), then prints the trace id
// and span ids it made as one JSON line. Used by tests/test_otlp.py to show
// that tests/otlp_receiver.py's checker accepts the reference's encoding.
import { SpanKind, SpanStatusCode, context, trace } from "@opentelemetry/api";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { BasicTracerProvider, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";

const base = process.argv[2];
const exporter = new OTLPTraceExporter({ url: `${base}/v1/traces` });
const provider = new BasicTracerProvider({
  resource: resourceFromAttributes({ "service.name": "otel-js-reference", "deployment.environment": "test" }),
  spanProcessors: [new SimpleSpanProcessor(exporter)],
});
const tracer = provider.getTracer("cloister-reference", "1.0.0");

const parent = tracer.startSpan("GET /v1/whoami", {
  kind: SpanKind.SERVER,
  attributes: { "http.request.method": "GET", "http.response.status_code": 200, "cloister.decision": "allow" },
});
const ctx = trace.setSpan(context.active(), parent);
const child = tracer.startSpan("kms /v1/encrypt", { kind: SpanKind.CLIENT, attributes: { retries: 0 } }, ctx);
child.addEvent("sent", { bytes: 32 });
child.setStatus({ code: SpanStatusCode.ERROR, message: "the KMS refused" });
child.end();
const linked = tracer.startSpan("linked", {
  links: [{ context: parent.spanContext(), attributes: { why: "untrusted" } }],
  attributes: { flag: true, ratio: 0.5, list: ["a", "b"] },
});
linked.end();
parent.end();
await provider.forceFlush();
await provider.shutdown();
console.log(JSON.stringify({
  traceId: parent.spanContext().traceId,
  spanIds: [parent, child, linked].map((s) => s.spanContext().spanId),
}));
