"""Source of the bundled illustrative sample dataset (written for framesft; not real Hansard text).

Run `python scripts/sample_passages.py` to regenerate src/framesft/resources/sample_data/{train,test}.csv.
The last PER_FRAME_TEST passages of each frame go to the test file.
"""

import csv
from pathlib import Path

PER_FRAME_TEST = 4

PASSAGES = {
    "Conflict": [
        "The Honourable Member opposite has spent three years sabotaging every attempt at a deal. His party says one thing in Brussels and another in this Chamber, and the country can see exactly whose side they are on.",
        "Let us be clear: the Government have declared war on their own backbenchers. The whips are threatening Members who dare to vote with their conscience, and the Cabinet is openly briefing against the Prime Minister.",
        "The Leader of the Opposition accuses us of betrayal, yet his own front bench cannot agree whether they want a second referendum or not. They are at each other's throats while pretending to lecture us.",
        "This is a battle between Parliament and the Executive. The Government tried to shut this House down to force through their plan, and we will fight them at every stage to stop it.",
        "The European Commission has taken a hostile stance from the very first day of negotiations. Their negotiators want to punish Britain for leaving, and our side has been far too timid in answering them.",
        "Members on the Government benches jeered when my honourable friend spoke. That tells us everything about their contempt for anyone who disagrees with their reckless approach to leaving the Union.",
        "The Democratic Unionist Party has made it plain that it will bring down this Government rather than accept a border in the Irish Sea. The coalition is falling apart in front of our eyes.",
        "Every amendment we table is met with the same partisan trickery. The Minister refuses to answer questions, his colleagues shout us down, and the Speaker has had to intervene again and again.",
        "The hard Brexiteers in the European Research Group have held the Prime Minister hostage for months. They want no compromise, and they will wreck any deal that does not meet their demands.",
        "The Scottish National Party will not stand by while Westminster tramples over the vote of the people of Scotland. We will oppose this Bill line by line and take the fight to the courts if we must.",
        "The Foreign Secretary attacked the Irish Government in terms no ally should ever use. Picking fights with our closest neighbours is no way to conduct a negotiation of this importance.",
        "Opposition Members have formed an alliance of convenience with one aim only: to overturn the referendum result. They are plotting in back rooms to seize control of the order paper.",
        "The Chancellor and the Brexit Secretary contradicted each other twice in one week. How can anyone trust a Cabinet whose members are at war with one another over the most basic questions?",
        "The Government's opponents in the other place are determined to block this legislation. The unelected Lords have chosen confrontation with the elected House, and we will not back down.",
    ],
    "Moral Value": [
        "We have a duty to keep faith with the people. Seventeen million citizens voted to leave, and it would be a profound betrayal of trust for this House to ignore their decision.",
        "This is a question of honour. Britain gave its word to the people of Northern Ireland in the Good Friday Agreement, and we must never break a promise made to secure peace.",
        "It is simply wrong to treat European citizens who have built their lives here as bargaining chips. Decency demands that we guarantee their rights without conditions, today.",
        "Democracy means accepting the result even when we dislike it. If we teach people that their vote counts only when it goes the way of the establishment, we corrode the very principle of consent.",
        "There is something deeply dishonest about a campaign that promised three hundred and fifty million pounds a week for the NHS. The public deserved the truth and were sold a fantasy.",
        "We should be guided by the values of fairness, tolerance and respect for the rule of law. Whatever our future relationship with Europe, those values must not be traded away.",
        "Our obligation to future generations must weigh on our conscience. Young people overwhelmingly voted to remain, and we owe them an honest account of what we are doing in their name.",
        "It is a matter of principle that Parliament, not ministers acting alone, decides questions of this magnitude. Sovereignty returned from Brussels was meant to rest with this House.",
        "I cannot in good conscience vote for a deal that I believe is against the national interest. My constituents sent me here to exercise my judgement, not to follow orders.",
        "The integrity of our democracy is at stake when foreign money and lies on the side of a bus shape a referendum. We have a moral responsibility to uphold honest elections.",
        "Keeping our word matters. A country that walks away from its international obligations and its unpaid bills will find that nobody trusts its signature again.",
        "Respect for the referendum is not a slogan; it is the foundation of democratic legitimacy. To ask the same question again until we get a different answer would be indefensible.",
        "We must act with compassion and justice towards those who came here in good faith. To abandon them now would shame us as a nation that prides itself on fair play.",
        "Truthfulness in public life is not optional. Ministers who mislead this House about the consequences of leaving betray the trust that voters place in all of us.",
    ],
    "Economic": [
        "The Office for Budget Responsibility forecasts that a no-deal exit would cut growth by two percentage points and add thirty billion pounds to borrowing. Those are the numbers the Chancellor must face.",
        "Manufacturers in my constituency rely on just-in-time supply chains across the Channel. Tariffs of ten per cent on finished cars would make our plants uncompetitive overnight.",
        "The pound has fallen sharply since the referendum, pushing up the price of imported food and fuel. Inflation is eating into wages, and households are noticeably poorer as a result.",
        "Our trade with the European Union is worth over six hundred billion pounds a year. No trade agreement with distant markets can replace that volume of business in the short term.",
        "The City of London depends on passporting rights to sell financial services into Europe. Losing them will move jobs and tax revenue to Frankfurt, Paris and Dublin.",
        "Farmers face the end of direct payments under the Common Agricultural Policy. The Government must say how much money will replace those subsidies and for how long.",
        "Investment in the British economy has stalled while businesses wait for clarity on customs arrangements. Capital spending by firms has been flat for three consecutive quarters.",
        "Leaving the single market will raise costs at the border: customs declarations alone could cost British exporters several billion pounds a year in paperwork and delays.",
        "New free trade deals with the United States, India and Australia could open markets worth trillions of pounds. Outside the customs union, we can set our own tariffs and cut the cost of living.",
        "The divorce bill of thirty-nine billion pounds is a heavy price for the taxpayer. Every pound paid to Brussels is a pound not spent on schools, hospitals and lower taxes here.",
        "Small exporters cannot absorb the cost of new rules of origin checks. Many will simply stop selling to European customers, and the loss of revenue will cost jobs.",
        "Ports such as Dover handle ten thousand lorries a day. Even a few minutes of extra checks per vehicle would create queues that paralyse supply chains and cost the economy millions.",
        "The Treasury's own analysis shows that every Brexit scenario leaves the economy smaller than staying in. Lower growth means lower tax receipts and tighter budgets for years.",
        "Pharmaceutical firms are stockpiling medicines at great expense and relocating regulatory staff. The sector warns that research investment worth billions is already leaving the country.",
    ],
    "Powerlessness": [
        "My constituents feel that nobody in Westminster is listening. Decisions are taken far away by people who will never have to live with the consequences, and they feel they have no say at all.",
        "The truth is that this House has lost control of the process. The timetable is set in Brussels, the terms are dictated to us, and we can only accept or reject what is put in front of us.",
        "Small businesses tell me they are helpless. They cannot plan, they cannot hire, and they cannot get a straight answer from any Government department about what rules will apply.",
        "For forty years, laws have been made for us by institutions we cannot vote out. People voted to leave because they felt they had no way to change anything through the ballot box.",
        "Northern Ireland has no functioning Executive and no voice in these negotiations. Its people are watching their future being decided by others without any means to influence the outcome.",
        "Fishing communities have been ignored for decades. They watched foreign fleets take their catch while successive Governments shrugged and said there was nothing that could be done.",
        "Parliament has been reduced to a spectator. The Government refuse to publish their analysis, refuse to give us a meaningful vote, and leave Members unable to scrutinise anything.",
        "The devolved Administrations were not consulted before the Government triggered Article 50. Edinburgh and Cardiff have been shut out of decisions that affect every part of their economies.",
        "Whatever we say in this Chamber, the clock keeps ticking towards the deadline. We are trapped between a deal we cannot amend and an exit we cannot prevent.",
        "People in left-behind towns feel abandoned by distant elites. They have seen factories close and high streets decline, and they have concluded that nobody with power cares about them.",
        "British citizens living in Spain and France have been left in limbo. They cannot vote in these decisions, yet their residency, pensions and healthcare hang on negotiations they cannot influence.",
        "The Bill hands ministers sweeping Henry VIII powers to rewrite laws without a vote. Backbench Members and the public alike will have no opportunity to stop changes they oppose.",
        "Our constituents wrote to us in their thousands, yet the Government pressed ahead as though those letters did not exist. Ordinary people are left feeling that their voices count for nothing.",
        "Once we leave, we will be rule-takers. We will have to follow European standards to trade with our biggest market while having no seat at the table where those standards are written.",
    ],
    "Human Impact": [
        "A constituent of mine, a nurse from Portugal who has worked in our local hospital for twelve years, told me she lies awake at night worrying whether she will be allowed to stay.",
        "I met a family in my surgery last Friday whose children were born here but whose father is a Polish citizen. They are frightened that their family could be split apart.",
        "Patients with rare cancers depend on medicines that cross the border every day. A mother told me her son's treatment could be delayed if supplies are held up at the ports.",
        "An elderly couple who retired to the Costa del Sol wrote to me in tears. They do not know whether their healthcare will continue, and they cannot afford to move back to Britain.",
        "A lorry driver from my constituency described sleeping in his cab for three nights at Calais during the trial checks, unable to see his children and losing pay every hour.",
        "Young scientists in our university labs are leaving. One researcher told me she turned down a permanent post because she feared her German husband would not be welcome here.",
        "The care home in my town has lost a third of its staff since the referendum. Residents with dementia now see unfamiliar faces every week, and their families are deeply distressed.",
        "A fisherman in my constituency, whose family has worked the same waters for five generations, told me he fears he will be the last of his line to go to sea.",
        "Students who hoped to study abroad through Erasmus have had their plans torn up. One young woman told me the exchange would have been the first time anyone in her family left the country.",
        "Victims of crime benefit when police can use the European arrest warrant. A constituent whose daughter was attacked told me the suspect fled abroad and she fears he will never face justice.",
        "A disabled constituent who relies on carers from Romania told me that without them he would have to leave his own home and move into residential care.",
        "Children of EU citizens in my local primary school have been taunted in the playground since the vote. Their parents tell me they are scared to speak their own language in the street.",
        "A pensioner who has lived in Britain for fifty years received a letter telling her to apply for settled status. She has no passport from her birth country and feels like a stranger in her own home.",
        "Parents of a premature baby told me the specialist incubator in our neonatal unit was built in Germany, and the engineers who maintain it may no longer be able to come.",
    ],
    "None": [
        "I beg to move that the Bill be now read a Second time. I shall set out the clauses in order and then take interventions from Members on both sides of the House.",
        "Will the Minister confirm the date on which the next round of negotiations will begin, and whether a written statement will be laid before the House in advance?",
        "With permission, Mr Speaker, I shall make a statement about the business for the week commencing 14 January, which will include the remaining stages of the Withdrawal Bill.",
        "My honourable friend is right to raise this point, and I will write to her with the detailed figures once the Department has completed its review of the consultation responses.",
        "The amendment in my name would insert a new clause after clause 7, requiring the Secretary of State to lay a report before Parliament within three months.",
        "Order. The House will now proceed to the Division on the motion as amended. I remind Members that the lobbies will be cleared in eight minutes.",
        "I thank the Select Committee for its report, which was published on Tuesday. The Government will respond formally within the usual two-month period.",
        "Could the Leader of the House tell us when the statutory instruments relating to the customs schedule will be debated, and whether it will be on the Floor of the House?",
        "The Committee of the whole House will consider clauses 1 to 4 today, and the remaining clauses and schedules on Thursday, according to the programme motion agreed last week.",
        "I refer Members to my entry in the Register of Members' Financial Interests. I also note that the previous speaker has now left the Chamber.",
        "The Minister said earlier that the guidance will be updated. Can he tell us which web page it will appear on and whether Members will be notified by email?",
        "Further to that point of order, Madam Deputy Speaker, I wish to correct the record: the figure I quoted in Tuesday's debate was for the last financial year, not this one.",
        "I welcome the Minister to his new post and look forward to working with him on the Committee. I will keep my remarks brief as many Members wish to speak.",
        "The question is that the amendment be made. As many as are of that opinion say Aye; of the contrary, No. Division. Clear the lobby.",
    ],
}


def main() -> None:
    folder = Path(__file__).resolve().parents[1] / "src" / "framesft" / "resources" / "sample_data"
    folder.mkdir(parents=True, exist_ok=True)
    splits = {"train": [], "test": []}
    for frame, passages in PASSAGES.items():
        splits["train"] += [(text, frame) for text in passages[:-PER_FRAME_TEST]]
        splits["test"] += [(text, frame) for text in passages[-PER_FRAME_TEST:]]
    for split, rows in splits.items():
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["chunk_text", "frame_name"])
            writer.writerows(rows)
        print(f"{split}: {len(rows)} rows")


if __name__ == "__main__":
    main()
