// weft-cni: the CNI plugin executable (installed as /opt/cni/bin/weft). Wiring only: the
// environment and stdin in, the answer on stdout, the exit code out.
import WeftCNI
import WeftCore
import WeftOS
#if canImport(Glibc)
import Glibc
#endif

var environment: [String: String] = [:]
var p = environ
while let entry = p.pointee {
    let s = String(cString: entry)
    if let eq = s.firstIndex(of: "=") { environment[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
    p += 1
}
let input = environment["CNI_COMMAND"] == "VERSION" && isatty(0) != 0 ? [] : ((try? Files.read("/dev/stdin")) ?? [])
let started = ContinuousClock.now
let outcome = Plugin(node: LinuxNode()).run(environment: environment, stdin: input)
// For the agent's metrics: best effort, never in the way of the answer.
if let log = outcome.eventLog, let command = outcome.command {
    let took = (ContinuousClock.now - started).components
    let event = CNIEvent(command: command, seconds: Double(took.seconds) + Double(took.attoseconds) / 1e18, code: outcome.errorCode)
    try? Files.append(log, Array(event.line.utf8))
}
var bytes = Array(outcome.stdout.utf8)[...]
while !bytes.isEmpty {
    let n = bytes.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
    if n <= 0 { if errno == EINTR { continue }; break }
    bytes = bytes.dropFirst(n)
}
exit(outcome.exitCode)
