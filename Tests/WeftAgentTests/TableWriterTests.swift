import Testing
import WeftCore
@testable import WeftAgent

/// When the agent writes a table whole and when only the change: the whole table first, after
/// any failure, when the change cannot be made incrementally, and when the caller asks (a resync).
struct TableWriterTests {
    struct Refused: Error {}

    /// What one `write` did: the calls made and the outcome.
    final class Calls {
        var log: [String] = []
    }

    func write(_ w: inout TableWriter, _ calls: Calls, update: Bool?, whole: Bool = false, updateFails: Bool = false, replaceFails: Bool = false) throws -> DataplaneWrite {
        try w.write(whole: whole, update: {
            calls.log.append("update")
            if updateFails { throw Refused() }
            return update
        }, replace: {
            calls.log.append("replace")
            if replaceFails { throw Refused() }
        }, onIncrementalFailure: { _ in calls.log.append("told") })
    }

    @Test func firstWholeThenChangesOnly() throws {
        var w = TableWriter()
        let calls = Calls()
        #expect(try write(&w, calls, update: true) == .replaced)
        #expect(try write(&w, calls, update: true) == .updated)
        #expect(try write(&w, calls, update: false) == .unchanged)
        #expect(calls.log == ["replace", "update", "update"])
    }

    @Test func aRefusedChangeIsToldThenTheTableReplaced() throws {
        var w = TableWriter()
        let calls = Calls()
        _ = try write(&w, calls, update: true)
        #expect(try write(&w, calls, update: true, updateFails: true) == .replaced)
        #expect(calls.log == ["replace", "update", "told", "replace"])
        // And the kernel is trusted again afterwards.
        #expect(try write(&w, calls, update: true) == .updated)
    }

    @Test func aChangeOnlyReplacingCanMakeReplaces() throws {
        var w = TableWriter()
        let calls = Calls()
        _ = try write(&w, calls, update: true)
        #expect(try write(&w, calls, update: nil) == .replaced)
        #expect(calls.log == ["replace", "update", "replace"])
    }

    /// A failed replace leaves the kernel's state unknown: the next write is whole again.
    @Test func afterAFailedReplaceTheNextWriteIsWhole() throws {
        var w = TableWriter()
        let calls = Calls()
        #expect(throws: Refused.self) { try write(&w, calls, update: true, replaceFails: true) }
        #expect(try write(&w, calls, update: true) == .replaced)
        #expect(calls.log == ["replace", "replace"])
    }

    @Test func forgetAndResyncReplace() throws {
        var w = TableWriter()
        let calls = Calls()
        _ = try write(&w, calls, update: true)
        w.forget()
        #expect(try write(&w, calls, update: true) == .replaced)
        #expect(try write(&w, calls, update: true, whole: true) == .replaced, "asked for the whole table (a resync)")
        #expect(calls.log == ["replace", "replace", "replace"])
    }
}
