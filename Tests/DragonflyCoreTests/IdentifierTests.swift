import DragonflyCore
import Testing

@Suite struct IdentifierTests {
    @Test func taskIDKnownAnswer() {
        let id = TaskID.make(url: "https://example.com", tag: "foo", application: "bar")
        #expect(id.rawValue == "06408fbf247ddaca478f8cb9565fe5591c28efd0994b8fea80a6a87d3203c5ca")
        #expect(id.shard == "064")
        // A lone "/" path is dropped, and the default filters remove signature parameters.
        #expect(TaskID.make(url: "https://example.com/", tag: "foo", application: "bar") == id)
        #expect(
            TaskID.make(url: "https://example.com/?X-Amz-Signature=abc&ns=docker.io", tag: "foo", application: "bar")
                == id)
        // Tag, application and a fixed piece length each change the ID.
        #expect(TaskID.make(url: "https://example.com", tag: "foo") != id)
        #expect(TaskID.make(url: "https://example.com", tag: "foo", application: "bar", pieceLength: 4 << 20) != id)
    }

    @Test func taskIDValidation() {
        #expect(TaskID(String(repeating: "a", count: 64)) != nil)
        #expect(TaskID(String(repeating: "A", count: 64)) == nil)
        #expect(TaskID(String(repeating: "a", count: 63)) == nil)
        #expect(TaskID("../" + String(repeating: "a", count: 61)) == nil)
        #expect(throws: DragonflyError.self) { _ = try TaskID.validated("nope") }
    }

    @Test(arguments: [
        ("https://h/p?a=1&X-Amz-Date=2&b=3", "https://h/p?a=1&b=3"),
        ("https://h/p?X-Amz-Date=2", "https://h/p"),
        ("https://h/?X-Goog-Signature=x", "https://h"),
        ("https://h/", "https://h"),
        ("https://h//", "https://h//"),
        ("https://h/p/", "https://h/p/"),
        ("https://h/p?b=2&a=1", "https://h/p?b=2&a=1"),
        ("https://h/p?X%2DAmz%2DDate=1&k=v#frag", "https://h/p?k=v#frag"),
        ("https://h/v2/r/blobs/sha256:ab?ns=docker.io", "https://h/v2/r/blobs/sha256:ab"),
    ])
    func defaultURLFilter(url: String, filtered: String) {
        #expect(URLFilter.filter(url, removing: URLFilter.defaultFilteredQueryParams) == filtered)
    }

    @Test func customFilterReplacesTheDefaultList() {
        let keys = URLFilter.parseList("token&session")
        #expect(keys == ["token", "session"])
        #expect(URLFilter.filter("https://h/p?token=1&ns=x&session=2", removing: keys) == "https://h/p?ns=x")
        #expect(
            TaskID.make(url: "https://h/p?token=1", filteredQueryParams: keys)
                == TaskID.make(url: "https://h/p?token=2", filteredQueryParams: keys)
        )
    }

    static let mebibyte: Int64 = 1 << 20
    static let pieceLengthCases: [(Int64?, Int64)] = [
        (nil, 4 * mebibyte),
        (0, 4 * mebibyte),
        (1, 4 * mebibyte),
        (500 * 4 * mebibyte, 4 * mebibyte),
        (500 * 4 * mebibyte + 500, 8 * mebibyte),
        (500 * 8 * mebibyte, 8 * mebibyte),
        (500 * 32 * mebibyte + 500, 64 * mebibyte),
        (500 * 64 * mebibyte, 64 * mebibyte),
        (500 * 64 * mebibyte * 4, 64 * mebibyte),
    ]

    @Test(arguments: pieceLengthCases)
    func pieceLengthBands(contentLength: Int64?, pieceLength: Int64) {
        #expect(PieceMath.pieceLength(forContentLength: contentLength) == pieceLength)
    }

    @Test func fixedPieceLengths() {
        #expect(PieceMath.isValidFixedPieceLength(4 << 20))
        #expect(PieceMath.isValidFixedPieceLength(64 << 20))
        #expect(!PieceMath.isValidFixedPieceLength(2 << 20))
        #expect(!PieceMath.isValidFixedPieceLength(128 << 20))
        #expect(!PieceMath.isValidFixedPieceLength(5 << 20))
    }
}

@Suite struct PieceRangeTests {
    static let piece: Int64 = 4 << 20

    @Test func rangeToPieces() {
        let length = 10 * Self.piece + 5
        #expect(PieceMath.pieces(covering: 0..<1, contentLength: length, pieceLength: Self.piece) == 0...0)
        #expect(PieceMath.pieces(covering: 1000..<2000, contentLength: length, pieceLength: Self.piece) == 0...0)
        #expect(
            PieceMath.pieces(
                covering: (Self.piece - 1)..<(Self.piece + 1), contentLength: length, pieceLength: Self.piece) == 0...1)
        #expect(
            PieceMath.pieces(covering: Self.piece..<(2 * Self.piece), contentLength: length, pieceLength: Self.piece)
                == 1...1)
        #expect(PieceMath.pieces(covering: 0..<length, contentLength: length, pieceLength: Self.piece) == 0...10)
        // Clamped to the object; empty and out-of-bounds ranges touch nothing.
        #expect(
            PieceMath.pieces(covering: (length - 1)..<(length + 100), contentLength: length, pieceLength: Self.piece)
                == 10...10)
        #expect(
            PieceMath.pieces(covering: length..<(length + 1), contentLength: length, pieceLength: Self.piece) == nil)
        #expect(PieceMath.pieces(covering: 5..<5, contentLength: length, pieceLength: Self.piece) == nil)
    }

    @Test func pieceCountAndSpans() {
        #expect(PieceMath.pieceCount(contentLength: 0, pieceLength: Self.piece) == 0)
        #expect(PieceMath.pieceCount(contentLength: 1, pieceLength: Self.piece) == 1)
        #expect(PieceMath.pieceCount(contentLength: Self.piece, pieceLength: Self.piece) == 1)
        #expect(PieceMath.pieceCount(contentLength: Self.piece + 1, pieceLength: Self.piece) == 2)
        let spans = (0..<3).compactMap {
            PieceMath.span(ofPiece: $0, contentLength: 2 * Self.piece + 7, pieceLength: Self.piece)
        }
        #expect(spans.map(\.offset) == [0, Self.piece, 2 * Self.piece])
        #expect(spans.map(\.length) == [Self.piece, Self.piece, 7])
        #expect(PieceMath.span(ofPiece: 3, contentLength: 2 * Self.piece + 7, pieceLength: Self.piece) == nil)
    }

    @Test(arguments: [
        (Int64?.some(0), SizeScope.empty), (1, .tiny), (128, .tiny), (129, .small), (4 << 20, .small),
        ((4 << 20) + 1, .normal), (nil, .normal),
    ])
    func sizeScopes(length: Int64?, scope: SizeScope) {
        #expect(SizeScope(contentLength: length, pieceLength: Self.piece) == scope)
    }

    @Test func hostAndPeerIDs() {
        #expect(HostID(ip: "10.0.0.1", hostname: "h1", peerPort: 4000, isSeed: false).rawValue == "10.0.0.1-h1-4000")
        #expect(
            HostID(ip: "10.0.0.1", hostname: "h1", peerPort: 4000, isSeed: true).rawValue == "10.0.0.1-h1-4000-seed")
        // Two daemons on one machine differ by their peer port.
        #expect(
            HostID(ip: "10.0.0.1", hostname: "h", peerPort: 1, isSeed: false)
                != HostID(ip: "10.0.0.1", hostname: "h", peerPort: 2, isSeed: false))
        let a = PeerID(ip: "10.0.0.1", hostname: "h1")
        let b = PeerID(ip: "10.0.0.1", hostname: "h1")
        #expect(a != b)
        #expect(a.rawValue.hasPrefix("10.0.0.1-h1-"))
        #expect(a.rawValue.count == "10.0.0.1-h1-".count + 36)
    }
}
