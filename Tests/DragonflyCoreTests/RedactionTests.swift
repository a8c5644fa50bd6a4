import DragonflyCore
import Testing

/// What of a URL, a header or a message may leave the process (issue 12 finding 9).
@Suite struct RedactionTests {
    @Test func urlsKeepTheirShapeAndLoseQueryValuesUserinfoAndFragments() {
        #expect(Redaction.url("http://h:8080/a/b") == "http://h:8080/a/b")
        #expect(
            Redaction.url("https://h/o?X-Amz-Signature=abc&v=1&flag")
                == "https://h/o?X-Amz-Signature=REDACTED&v=REDACTED&flag")
        #expect(Redaction.url("http://user:pw@h/x") == "http://REDACTED@h/x")
        #expect(Redaction.url("http://user:p@ss@h/x?t=1#frag") == "http://REDACTED@h/x?t=REDACTED")
        #expect(Redaction.url("http://h/path@not-userinfo") == "http://h/path@not-userinfo")
        #expect(Redaction.url("/v2/x?ns=a") == "/v2/x?ns=REDACTED")
    }

    @Test func headersKeepOnlyAllowlistedValues() {
        let shown = Redaction.headers([
            "Authorization": "Bearer secret", "Cookie": "s=1", "X-Api-Key": "k", "Content-Type": "text/plain",
            "Location": "http://h/x?sig=abc", "Range": "bytes=0-1",
        ])
        #expect(shown["Authorization"] == "REDACTED")
        #expect(shown["Cookie"] == "REDACTED")
        #expect(shown["X-Api-Key"] == "REDACTED")
        #expect(shown["Content-Type"] == "text/plain")
        #expect(shown["Location"] == "http://h/x?sig=REDACTED")
        #expect(shown["Range"] == "bytes=0-1")
        #expect(Redaction.headerLine("Authorization: Bearer x") == "Authorization: REDACTED")
        #expect(!Redaction.headerLine("Bearer-token-without-colon").contains("Bearer"))
    }

    @Test func messagesRedactEveryURLInThem() {
        let message = Redaction.message(
            "origin returned 404 Not Found for http://u:p@h/x?token=SECRET (range 0-1); see https://h/y?sig=S2")
        #expect(!message.contains("SECRET"))
        #expect(!message.contains("S2"))
        #expect(!message.contains("u:p"))
        #expect(message.hasPrefix("origin returned 404 Not Found for http://REDACTED@h/x?token=REDACTED"))
        #expect(Redaction.message("no url here") == "no url here")
    }
}
